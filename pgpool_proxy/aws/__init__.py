"""AWS integration: the only package that imports boto3/botocore (Secrets Manager, IAM tokens)."""
