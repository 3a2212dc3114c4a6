"""What the SQL lexer (protocol.sqlscan) knows: the flags it returns and the words it judges by.

The flags say what a statement may leave in the session; the keyword tables say which statement
heads and which function calls can leave nothing. A word missing from a table costs a round
trip (the session is checked), never a leak: extend them freely.
"""

from __future__ import annotations

# Flags returned by classify().
SQL_SESSION = 1  # may change the session: look at it after the transaction
SQL_DEALLOCATE = 2  # a DEALLOCATE or DISCARD: prepared statements may be gone
SQL_PINS = 4  # may create or drop objects that tie the session to its server connection
SQL_SETTINGS = 8  # sets settings named in the text (see setting_names)
SQL_FULL = 16  # may reset or set settings the text does not name: read them all
SQL_OPAQUE = 32  # runs code the proxy cannot see into (functions, DO, CALL): whatever it left
# behind must not reach another client
SQL_DDL = 64  # CREATE, ALTER or DROP: prepared statements may now mean something else (pool-wide)
# Not a classification: set in a client's dirty flags once the pool has been told of its DDL
# mid-transaction, so that it is told once more (and only once) when the transaction ends.
SQL_DDL_TOLD = 128
SQL_SCHEMA = SQL_DDL | SQL_DDL_TOLD
# SET LOCAL search_path (or SCHEMA): what a query text names differs until the transaction ends,
# so a Parse after it shares no statement (session.statements._lookup); nothing to read back.
SQL_PATH = 256
# What the end of a transaction forgets without asking the server.
SQL_TRANSIENT = SQL_SCHEMA | SQL_PATH

SQL_ALL = SQL_SESSION | SQL_PINS | SQL_SETTINGS | SQL_FULL | SQL_OPAQUE
# What running code the proxy cannot see may have done (a call, EXECUTE, PREPARE).
OPAQUE_FLAGS = SQL_SESSION | SQL_PINS | SQL_SETTINGS | SQL_OPAQUE
# What a statement that creates or drops session objects may have done.
PINS_FLAGS = SQL_SESSION | SQL_PINS

# Texts longer than this are not lexed: they are flagged whole (bulk loads pay one probe).
CLASSIFY_LIMIT = 16 * 1024
# Edges of one nested comment followed at most: past that, the text gets every flag.
MAX_EVENTS = 256
# Steps Python takes per text at most, over the main pass's events and the look-aheads' tokens
# together (about 1 us each): a script of a few dozen SETs stays readable, and a text built to
# be slow costs about a millisecond before it is judged unseen.
MAX_STEPS = 1024
# What one call site costs of that budget (about 10 us of Python each).
CALL_STEPS = 3
# Setting names read back per text at most; more means the text is treated as opaque.
MAX_NAMES = 32
# Longest qualified name worth taking apart: three parts of 63 bytes, each quoted with every
# quote doubled, and spaces around the dots.
MAX_CHAIN = 3 * (2 * 63 + 2) + 16

# Statements that cannot change the session by themselves (calls inside them are judged apart).
SAFE_FIRST = frozenset(
    b"select insert update delete merge with values table begin start commit end rollback "
    b"abort savepoint release fetch move show copy lock truncate analyze analyse vacuum notify "
    b"checkpoint comment grant revoke refresh reindex cluster security import reassign "
    b"explain".split()
)
# Statements that change session objects the probe counts (and nothing it cannot see).
PIN_FIRST = frozenset(b"listen unlisten declare close create drop prepare".split())
# Statements that change the schema (ALTER ROLE and ALTER SYSTEM too: cheap to count, and rare).
DDL_FIRST = frozenset(b"create alter drop".split())

# Words that may stand before '(' without being a function call.
NOT_CALLS = frozenset(
    b"in values exists any all some array row cast coalesce nullif greatest least extract "
    b"overlay position substring trim over filter group as on using and or not where select "
    b"from join returning set into lateral with by having when then else case is like ilike "
    b"similar between distinct union except intersect limit offset order partition rows range "
    b"groups check default references unique key primary include conflict do update insert "
    b"delete for to of table view index interval timestamp timestamptz time timetz date "
    b"numeric decimal varchar char character bpchar bit varbit varying float double precision "
    b"int integer smallint bigint real boolean grouping window recursive materialized "
    b"tablesample only returns function procedure aggregate type trigger sequence domain "
    b"exclude foreign constraint nulls first last asc desc collate at zone xmlelement "
    b"xmlforest xmlconcat xmlparse xmlpi xmlroot xmlserialize xmlexists xmlattributes "
    b"current_time current_timestamp localtime localtimestamp normalize treat json "
    b"json_array json_object json_scalar json_serialize json_query json_exists json_value "
    b"json_table is_json merge matched".split()
)
# A word after which '(' opens a column list, not a call.
LIST_AFTER = frozenset(
    b"into table index view function procedure aggregate type references with as copy trigger "
    b"policy sequence".split()
)
# Built-in functions without session effects. Calls of anything else are opaque. (nextval and
# friends change currval/lastval: sequence state is not tracked, as PgBouncer does not.)
PURE = frozenset(
    b"count sum avg min max now lower upper length char_length character_length octet_length "
    b"bit_length substr concat concat_ws replace btrim ltrim rtrim strpos left right abs round "
    b"floor ceil ceiling trunc mod power pow sqrt cbrt exp ln log log10 sign pi degrees radians "
    b"sin cos tan asin acos atan atan2 random width_bucket div gcd lcm factorial scale "
    b"array_agg string_agg json_agg jsonb_agg json_object_agg jsonb_object_agg "
    b"json_build_object jsonb_build_object json_build_array jsonb_build_array to_json to_jsonb "
    b"row_to_json array_to_json jsonb_set jsonb_set_lax jsonb_insert jsonb_strip_nulls "
    b"json_strip_nulls jsonb_pretty jsonb_typeof json_typeof jsonb_array_elements "
    b"json_array_elements jsonb_array_elements_text json_array_elements_text jsonb_each "
    b"json_each jsonb_each_text json_each_text jsonb_object_keys json_object_keys "
    b"jsonb_extract_path json_extract_path jsonb_extract_path_text json_extract_path_text "
    b"jsonb_array_length json_array_length jsonb_path_query jsonb_path_query_first "
    b"jsonb_path_exists jsonb_path_match jsonb_path_query_array jsonb_populate_record "
    b"json_populate_record jsonb_to_record json_to_record jsonb_to_recordset json_to_recordset "
    b"unnest generate_series generate_subscripts array_length array_position array_positions "
    b"array_remove array_replace array_append array_prepend array_cat array_fill array_upper "
    b"array_lower array_ndims array_dims array_to_string string_to_array cardinality "
    b"date_trunc date_part date_bin to_char to_date to_timestamp to_number age make_date "
    b"make_time make_timestamp make_timestamptz make_interval clock_timestamp "
    b"statement_timestamp transaction_timestamp timeofday isfinite justify_days "
    b"justify_hours justify_interval timezone gen_random_uuid uuid_generate_v4 md5 sha224 "
    b"sha256 sha384 sha512 encode decode format regexp_replace regexp_matches regexp_match "
    b"regexp_split_to_array regexp_split_to_table regexp_count regexp_instr regexp_like "
    b"regexp_substr split_part row_number rank dense_rank percent_rank cume_dist ntile lag "
    b"lead first_value last_value nth_value bool_and bool_or every bit_and bit_or bit_xor "
    b"stddev stddev_pop stddev_samp variance var_pop var_samp corr covar_pop covar_samp "
    b"percentile_cont percentile_disc mode version current_setting current_database "
    b"current_schema current_schemas pg_typeof to_regclass to_regtype to_regproc format_type "
    b"obj_description col_description quote_ident quote_literal quote_nullable ascii chr "
    b"initcap lpad rpad repeat reverse translate starts_with to_hex to_ascii nextval currval "
    b"setval lastval pg_sleep pg_backend_pid pg_postmaster_start_time has_table_privilege "
    b"has_schema_privilege has_database_privilege has_column_privilege has_function_privilege "
    b"pg_has_role pg_get_viewdef pg_get_indexdef pg_get_constraintdef pg_get_functiondef "
    b"pg_get_expr pg_get_userbyid pg_relation_size pg_total_relation_size pg_table_size "
    b"pg_indexes_size pg_database_size pg_size_pretty pg_column_size pg_is_in_recovery "
    b"pg_current_wal_lsn pg_last_wal_replay_lsn pg_wal_lsn_diff txid_current "
    b"pg_current_xact_id pg_notify int4range int8range numrange tsrange tstzrange daterange "
    b"isempty lower_inc upper_inc lower_inf upper_inf range_merge multirange to_tsvector "
    b"to_tsquery plainto_tsquery phraseto_tsquery websearch_to_tsquery ts_rank ts_rank_cd "
    b"ts_headline setweight numnode querytree strip array_to_tsvector tsvector_to_array "
    b"point box circle polygon path lseg line area center diameter radius st_distance "
    b"st_contains st_intersects st_makepoint st_setsrid st_asgeojson st_astext st_geomfromtext "
    b"host network netmask masklen inet_same_family set_masklen abbrev broadcast hostmask "
    b"similarity word_similarity crypt gen_salt digest hmac uuid_in xmlagg "
    b"int2 int4 int8 float4 float8 text bool oid regclass jsonb_exists any_value "
    b"array_sample array_shuffle trim_array string_to_table unistr".split()
)
# Settings that cannot be read back and set again: `seed` reads as "unavailable" (the state it
# sets is the random generator's, which no probe sees). A text naming one is judged opaque.
UNREPLAYABLE = frozenset([b"seed"])
# Session-level advisory locks pin the session (the _xact_ ones end with the transaction, but
# pinning for them costs one count and keeps the list simple).
ADVISORY = frozenset(
    b"pg_advisory_lock pg_advisory_lock_shared pg_try_advisory_lock pg_try_advisory_lock_shared "
    b"pg_advisory_unlock pg_advisory_unlock_shared pg_advisory_unlock_all pg_advisory_xact_lock "
    b"pg_advisory_xact_lock_shared pg_try_advisory_xact_lock "
    b"pg_try_advisory_xact_lock_shared".split()
)
# Statement words naming a setting other than the word itself.
SPECIAL_SET = {
    b"role": (b"role",),
    b"names": (b"client_encoding",),
    b"schema": (b"search_path",),
    b"time": (b"timezone",),
    b"xml": (b"xmloption",),
}
