"""What a SQL text may leave behind in the session, found by a linear-time lexer.

Transaction pooling hands a client a different server connection per transaction, so anything a
statement leaves in the session (a setting, an advisory lock, a temporary table) must be noticed
before the connection serves anyone else. The proxy does not parse SQL. It lexes it the way
PostgreSQL's scanner does (strings, E'' and dollar quotes, quoted identifiers, nested comments,
`--` comments ended by CR or LF) and reads only statement heads and call sites. The rule is that
a text the lexer cannot vouch for costs a round trip, never a leak: a statement it does not know,
a call of a function it does not know, or anything ambiguous is flagged, and the session is
checked (see `session.state`) or reset before another client gets it.

Everything here is linear in the length of the text: one left-to-right pass of a tokenizer
built from possessive patterns, with `find` for comment and dollar-quote ends. Texts longer
than CLASSIFY_LIMIT are not lexed at all: they get every flag.
"""

from __future__ import annotations

import re

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
# so a Parse after it shares no statement (ClientConnection._lookup); nothing to read back.
SQL_PATH = 256
# What the end of a transaction forgets without asking the server.
SQL_TRANSIENT = SQL_SCHEMA | SQL_PATH

SQL_ALL = SQL_SESSION | SQL_PINS | SQL_SETTINGS | SQL_FULL | SQL_OPAQUE
_OPAQUE = SQL_SESSION | SQL_PINS | SQL_SETTINGS | SQL_OPAQUE
_PINS = SQL_SESSION | SQL_PINS

# Texts longer than this are not lexed: they are flagged whole (bulk loads pay one probe).
CLASSIFY_LIMIT = 16 * 1024
# Edges of one nested comment followed at most: past that, the text gets every flag.
MAX_EVENTS = 256
# Steps Python takes per text at most, over the main pass's events and the look-aheads' tokens
# together (about 1 us each): a script of a few dozen SETs stays readable, and a text built to
# be slow costs about a millisecond before it is judged unseen.
MAX_STEPS = 1024
# What one call site costs of that budget (about 10 us of Python each).
_CALL_STEPS = 3
# Setting names read back per text at most; more means the text is treated as opaque.
MAX_NAMES = 32
# Longest qualified name worth taking apart: three parts of 63 bytes, each quoted with every
# quote doubled, and spaces around the dots.
_MAX_CHAIN = 3 * (2 * 63 + 2) + 16

# One token per match. Each alternative is possessive (no backtracking), so the whole pass is
# linear. Group numbers are the token kinds below.
_TOKEN = re.compile(
    rb"([ \t\n\r\f\v]++)"  # 1 whitespace
    rb"|(--[^\n\r]*+)"  # 2 line comment (PostgreSQL ends it at CR as well as LF)
    rb"|(/\*)"  # 3 block comment start (nesting handled by _comment_end)
    rb"|([eE]'(?:[^'\\]++|\\.|'')*+'?)"  # 4 E'' string: backslash escapes
    rb"|('[^']*+(?:''[^']*+)*+'?)"  # 5 standard string
    rb"|([uU]&\"[^\"]*+(?:\"\"[^\"]*+)*+\"?)"  # 6 U&"" identifier (escapes: not decoded)
    rb"|(\"[^\"]*+(?:\"\"[^\"]*+)*+\"?)"  # 7 quoted identifier
    rb"|(\$(?:[A-Za-z_\x80-\xff][A-Za-z0-9_\x80-\xff]*+)?\$)"  # 8 dollar quote start
    rb"|([A-Za-z_\x80-\xff][A-Za-z0-9_$\x80-\xff]*+)"  # 9 word
    rb"|([0-9][0-9A-Za-z_.]*+|\.[0-9][0-9A-Za-z_.]*+|\$[0-9]++)"  # 10 number or parameter
    rb"|((?:[+*<>=~!@#%^&|`?:\[\]{}\\]|-(?!-)|/(?!\*))++)"  # 11 operator run
    rb"|(.)",  # 12 any other single byte: ; ( ) , .
    re.DOTALL,
)
_T_WS, _T_LC, _T_BC, _T_ESTR, _T_STR, _T_UQI, _T_QI, _T_DQ, _T_WORD = range(1, 10)
_T_OP, _T_CHAR = 11, 12
_COMMENT_EDGE = re.compile(rb"/\*|\*/")
_MB_BACKSLASH = re.compile(rb"[\x80-\xff]\\")
_SEMI, _LPAREN, _DOT, _COMMA = ord(";"), ord("("), ord("."), ord(",")

# Full passes remembered by text: drivers send the same statement texts again and again.
_CACHE_TEXT = 4096
_CACHE_SIZE = 4096
_cache: dict[bytes, int] = {}
_WS = re.compile(rb"[ \t\n\r\f\v]*+")
_WORD = re.compile(rb"[A-Za-z_\x80-\xff][A-Za-z0-9_$\x80-\xff]*+")
_HEAD_WORD = re.compile(rb"[ \t\n\r\f\v]*+([A-Za-z_\x80-\xff][A-Za-z0-9_$\x80-\xff]*+)")
_WS_CHARS = b" \t\n\r\f\v"
_WORD_BYTES = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_$"
) | frozenset(range(0x80, 0x100))

# The full pass matches one of these at a time. Group 1 is a run of everything that cannot
# matter (whitespace, comments without nesting, strings without backslashes, names not called,
# numbers, operators), taken at C speed; the others are where Python looks. Every quantifier is
# possessive and every alternative starts differently, so matching is linear.
_W = rb"[ \t\n\r\f\v]"
_NAME = rb"(?:[A-Za-z_\x80-\xff][A-Za-z0-9_$\x80-\xff]*+|\"[^\"]*+(?:\"\"[^\"]*+)*+\")"
_CHAIN = _NAME + rb"(?:" + _W + rb"*+\." + _W + rb"*+(?:" + _NAME + rb"|\*))*+"
_NOTABLE = (
    rb"(?:(?i:into|temp|temporary|execute)(?![A-Za-z0-9_$\x80-\xff])|(?i:pg_temp)|[eE]'"
    rb"|[uU]&['\"])"
)
_INTERESTING = re.compile(
    rb"((?:[+*<>=~!@#%^&|`?:\[\]{},()\\ \t\n\r\f\v]++|-(?!-)|/(?!\*)"
    rb"|(?!" + _NOTABLE + rb")" + _CHAIN + rb"(?!" + _W + rb"*+(?:\(|/\*|--))"
    rb"|(?:[0-9]|\.[0-9])[0-9A-Za-z_.]*+|\$[0-9]++"
    rb"|'[^'\\]*+(?:''[^'\\]*+)*+'"
    rb"|[eE]'(?:[^'\\]++|\\.|'')*+'"
    rb"|--[^\n\r]*+"
    rb"|/\*(?:[^*/]++|\*(?!/)|/(?!\*))*+\*/"
    rb")++)"
    rb"|(;)"
    rb"|(" + _CHAIN + rb")" + _W + rb"*+\("
    rb"|(?!" + _NOTABLE + rb")(" + _CHAIN + rb")(?=" + _W + rb"*+(?:/\*|--))"
    rb"|((?i:into|temp|temporary|execute)(?![A-Za-z0-9_$\x80-\xff])|(?i:pg_temp)[A-Za-z0-9_$\x80-\xff]*+)"
    rb"|(/\*)"
    rb"|(\$(?:[A-Za-z_\x80-\xff][A-Za-z0-9_\x80-\xff]*+)?\$)"
    rb"|([eE]?'|[uU]&['\"]|\")"
    rb"|(.)",
    re.DOTALL,
)
# The literal first argument of set_config, followed by a comma.
_NAME_ARG = re.compile(_W + rb"*+('[^'\\]*+(?:''[^'\\]*+)*+')" + _W + rb"*+,")

# Statements that cannot change the session by themselves (calls inside them are judged apart).
_SAFE_FIRST = frozenset(
    b"select insert update delete merge with values table begin start commit end rollback "
    b"abort savepoint release fetch move show copy lock truncate analyze analyse vacuum notify "
    b"checkpoint comment grant revoke refresh reindex cluster security import reassign "
    b"explain".split()
)
# The common case at C speed: one statement that starts harmlessly and has no string, comment,
# quoted name, dollar quote, call, INTO or TEMP in it.
_FAST = re.compile(
    rb"[ \t\n\r\f\v]*+(?:"
    + b"|".join(sorted(_SAFE_FIRST - {b"explain"}))
    + rb")(?![A-Za-z0-9_$\x80-\xff])"
    rb"(?:[^('\"\\$/;\-iItT]++|-(?!-)|/(?!\*)|\$[0-9]|[iI](?![nN][tT][oO])|[tT](?![eE][mM][pP]))*+"
    rb"(?:;[ \t\n\r\f\v]*+)?",
    re.IGNORECASE,
)
# Statements that change session objects the probe counts (and nothing it cannot see).
_PIN_FIRST = frozenset(b"listen unlisten declare close create drop prepare".split())
# Statements that change the schema (ALTER ROLE and ALTER SYSTEM too: cheap to count, and rare).
_DDL_FIRST = frozenset(b"create alter drop".split())

# Words that may stand before '(' without being a function call.
_NOT_CALLS = frozenset(
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
_LIST_AFTER = frozenset(
    b"into table index view function procedure aggregate type references with as copy trigger "
    b"policy sequence".split()
)
# Built-in functions without session effects. Calls of anything else are opaque. (nextval and
# friends change currval/lastval: sequence state is not tracked, as PgBouncer does not.)
_PURE = frozenset(
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
_UNREPLAYABLE = frozenset([b"seed"])
# Session-level advisory locks pin the session (the _xact_ ones end with the transaction, but
# pinning for them costs one count and keeps the list simple).
_ADVISORY = frozenset(
    b"pg_advisory_lock pg_advisory_lock_shared pg_try_advisory_lock pg_try_advisory_lock_shared "
    b"pg_advisory_unlock pg_advisory_unlock_shared pg_advisory_unlock_all pg_advisory_xact_lock "
    b"pg_advisory_xact_lock_shared pg_try_advisory_xact_lock "
    b"pg_try_advisory_xact_lock_shared".split()
)
# Statement words naming a setting other than the word itself.
_SPECIAL_SET = {
    b"role": (b"role",),
    b"names": (b"client_encoding",),
    b"schema": (b"search_path",),
    b"time": (b"timezone",),
    b"xml": (b"xmloption",),
}


def classify(buf: bytes | bytearray, start: int, end: int) -> int:
    """Flags for the SQL text in buf[start:end] (no NUL inside the range)."""
    if end - start > CLASSIFY_LIMIT:
        return SQL_ALL
    if _FAST.fullmatch(buf, start, end) is not None:
        return 0
    if end - start > _CACHE_TEXT:
        return _scan(buf, start, end, None)
    key = bytes(buf[start:end])
    flags = _cache.get(key)
    if flags is None:
        flags = _scan(buf, start, end, None)
        if len(_cache) >= _CACHE_SIZE:
            _cache.clear()
        _cache[key] = flags
    return flags


def setting_names(buf: bytes | bytearray, start: int, end: int) -> list[str]:
    """Lower-case names of the settings the text sets or resets by name (SET x, RESET x,
    set_config('x', ...)), plus role and session_authorization when it touches them."""
    names: list[str] = []
    if end - start <= CLASSIFY_LIMIT:
        _scan(buf, start, end, names)
    return names


def _scan(buf: bytes | bytearray, start: int, end: int, names: list[str] | None) -> int:
    """The full pass: C-speed runs over what cannot matter, Python only at statement starts,
    call sites, a few words, and quotes or comments the runs cannot take whole."""
    if _MB_BACKSLASH.search(buf, start, end) is not None:
        # In SJIS, BIG5, GBK, UHC, GB18030 and JOHAB a character's second byte may be 0x5C. The
        # server lexes after converting to UTF-8, so where a string ends is not what the bytes
        # say: the text is judged unseen.
        return SQL_ALL
    flags = 0
    # One budget for every place Python looks in this text: events of the main pass and the
    # tokens the look-aheads take (a statement's head, what follows a name and a comment).
    budget = [MAX_STEPS]
    first, into = _head(buf, start, end, names, budget)
    if first < 0:
        flags |= -first
    search = _INTERESTING.match
    # A '.' that no name or number took: what it qualifies (`s./**/f(`) is not known.
    dotted = False
    p = start
    while p < end:
        budget[0] -= 1
        if budget[0] < 0:
            return SQL_ALL  # a text built to keep Python busy: judged unseen, at bounded cost
        m = search(buf, p, end)
        assert m is not None
        kind = m.lastindex
        p = m.end()
        if kind == 1:
            continue
        if kind == 2:  # ';'
            flags |= _statement_end(first, into)
            first, into = _head(buf, p, end, names, budget)
            if first < 0:
                flags |= -first
            dotted = False
        elif kind == 3:  # a call
            budget[0] -= _CALL_STEPS  # judging a call costs Python more than a token
            flags |= (
                _OPAQUE if dotted else _call_site(buf, start, m.start(), m.group(3), p, end, names)
            )
            dotted = False
        elif kind == 4:  # a name, then a comment: PostgreSQL drops comments, so `f/**/(` is a call
            budget[0] -= _CALL_STEPS
            after = _after_comments(buf, p, end, budget)
            if after < 0 or buf[after] == _DOT:
                flags |= _OPAQUE | SQL_FULL
            elif buf[after] == _LPAREN:
                chain = m.group(4)
                if dotted:
                    flags |= _OPAQUE
                else:
                    flags |= _call_site(buf, start, m.start(), chain, after + 1, end, names)
                dotted = False
        elif kind == 5:  # INTO, TEMP, pg_temp, EXECUTE...
            w = bytes(m.group()).lower()
            if w == b"into":
                into = True
            elif w == b"execute":
                # EXPLAIN EXECUTE, CREATE TABLE ... AS EXECUTE: a prepared statement runs, made
                # by PREPARE or by a protocol Parse (then named pgpool_N), judged by neither.
                flags |= _OPAQUE
            else:
                flags |= _PINS
        elif kind == 6:  # a block comment, which may nest
            p = _comment_end(buf, p, end)
            if p < 0:
                return SQL_ALL
        elif kind == 7:  # a dollar quote
            close = buf.find(m.group(), p, end)
            p = end if close < 0 else close + len(m.group())
        elif kind == 8:
            # A string or name the runs could not take: with a backslash in a standard string
            # (where it ends depends on standard_conforming_strings, which the client controls),
            # U&"..." escapes, or unterminated. What follows cannot be trusted.
            flags |= _OPAQUE | SQL_FULL
            t = _TOKEN.match(buf, m.start(), end)
            assert t is not None
            p = t.end()
        elif buf[m.start()] == _DOT:
            dotted = True
    return flags | _statement_end(first, into)


def _after_comments(buf: bytes | bytearray, p: int, end: int, budget: list[int]) -> int:
    """Position of the first byte at or after p that is neither whitespace nor a comment; -1
    at the end of the text or when the comments are too many to follow at bounded cost."""
    while budget[0] > 0:
        budget[0] -= 1
        t = _TOKEN.match(buf, p, end)
        if t is None:
            return -1
        kind = t.lastindex
        if kind == _T_WS or kind == _T_LC:
            p = t.end()
        elif kind == _T_BC:
            p = _comment_end(buf, t.end(), end)
            if p < 0:
                return -1
        else:
            return p
    return -1


def _head(
    buf: bytes | bytearray, p: int, end: int, names: list[str] | None, budget: list[int]
) -> tuple[int, bool]:
    """(kind of statement, INTO seen) for the statement starting at p. The kind is 1 for one
    that can change nothing by itself, 2 for SELECT-like (INTO matters), 0 for an empty one, or
    minus the flags of one that can."""
    m = _HEAD_WORD.match(buf, p, end)
    if m is not None:
        w = bytes(m.group(1)).lower()
        if w in _SAFE_FIRST:
            if w == b"explain":
                return -_PINS, False
            return (2 if w == b"select" or w == b"with" else 1), False
    head: list[tuple[int, bytes]] = []
    while p < end and len(head) < 8:
        budget[0] -= 1
        if budget[0] < 0:
            return -SQL_ALL, False
        t = _TOKEN.match(buf, p, end)
        assert t is not None
        kind = t.lastindex or 0
        p = t.end()
        if kind == _T_WS or kind == _T_LC:
            continue
        if kind == _T_BC:
            p = _comment_end(buf, p, end)
            if p < 0:
                return -SQL_ALL, False
            continue
        tok = bytes(t.group())
        if kind == _T_CHAR and tok == b";":
            break
        if kind == _T_WORD:
            tok = tok.lower()
        elif kind == _T_QI:
            tok = b'"' + _quoted(tok)
        head.append((kind, tok))
    if not head:
        return 0, False
    kind, first = head[0]
    if kind == _T_CHAR and first == b"(":
        return 2, False
    if kind != _T_WORD:
        return -SQL_ALL, False
    if first in _SAFE_FIRST:
        return (2 if first == b"select" or first == b"with" else 1), False
    return -_statement([t for _, t in head], names), False


def _statement_end(first: int, into: bool) -> int:
    # SELECT ... INTO creates a table: a temporary one, perhaps. INTO in a SELECT-like statement
    # may also be the target of a WITH ... INSERT INTO; telling them apart would take a parser
    # (a column may be named insert), so both cost a count of what the session holds.
    return _PINS if first == 2 and into else 0


def _call_site(
    buf: bytes | bytearray,
    start: int,
    at: int,
    chain: bytes,
    after: int,
    end: int,
    names: list[str] | None,
) -> int:
    """Flags for `name(` at `at` (chain is the possibly qualified name; `after` follows '(')."""
    if len(chain) > _MAX_CHAIN:
        return _OPAQUE  # no name PostgreSQL accepts is this long: not worth taking apart
    if b'"' in chain:
        parts = [
            b'"' + _quoted(t.group()) if t.lastindex == _T_QI else bytes(t.group()).lower()
            for t in _TOKEN.finditer(chain)
            if t.lastindex in (_T_WORD, _T_QI)
        ]
    else:
        parts = [x.strip(_WS_CHARS).lower() for x in bytes(chain).split(b".")]
    word = parts[-1]
    qual = parts[-2] if len(parts) > 1 else b""
    if _word_before(buf, start, at) in _LIST_AFTER or (not qual and word in _NOT_CALLS):
        return 0
    if len(parts) > 2 or (qual and qual != b"pg_catalog"):
        return _OPAQUE
    if word in _PURE:
        return 0
    if word in _ADVISORY:
        return _PINS
    if word == b"set_config":
        lit = _NAME_ARG.match(buf, after, end)
        if lit is None:
            # A name the proxy cannot read from the text (a parameter, an expression).
            return _OPAQUE | SQL_FULL
        name = _literal(lit.group(1))
        if not name or _unreadable(name):
            return _OPAQUE | SQL_FULL
        if names is not None:
            _add_name(names, name)
        return SQL_SESSION | SQL_SETTINGS
    return _OPAQUE


def _word_before(buf: bytes | bytearray, start: int, at: int) -> bytes:
    """The word just before position at (within 64 bytes), lower-cased; "" when a comment may
    be near it (`--as` + newline + `f(`: the word is the comment's, not the statement's)."""
    seg = bytes(buf[max(start, at - 64) : at])
    if b"--" in seg or b"/*" in seg or b"*/" in seg:
        return b""
    seg = seg.rstrip(_WS_CHARS)
    i = len(seg)
    while i and seg[i - 1] in _WORD_BYTES:
        i -= 1
    return seg[i:].lower()


def _comment_end(buf: bytes | bytearray, p: int, end: int) -> int:
    """End of a block comment whose opening ended at p (comments nest, as in PostgreSQL); -1
    when the nesting is too deep to follow at bounded cost."""
    depth = 1
    budget = MAX_EVENTS
    while depth:
        budget -= 1
        if budget < 0:
            return -1
        m = _COMMENT_EDGE.search(buf, p, end)
        if m is None:
            return end
        depth += 1 if buf[m.start()] == 0x2F else -1
        p = m.end()
    return p


def _statement(head: list[bytes], names: list[str] | None) -> int:
    """Flags for a statement whose first word is not one of the harmless ones."""
    first = head[0]
    if first == b"prepare":
        # The statement runs later by EXECUTE inside another text (EXPLAIN EXECUTE) or by a
        # protocol Bind of its name, judged by neither: the session is treated as having run
        # code the proxy could not see.
        return _OPAQUE
    if first in _DDL_FIRST:
        # A plan prepared before it may have another result now (session.prepared: epochs).
        return (_PINS | SQL_DDL) if first in _PIN_FIRST else SQL_DDL
    if first in _PIN_FIRST:
        return _PINS
    if first == b"set":
        return _set(head[1:], names)
    if first == b"reset":
        return _reset(head[1:], names)
    if first == b"discard":
        return SQL_SESSION | SQL_DEALLOCATE | SQL_PINS | SQL_SETTINGS | SQL_FULL
    if first == b"deallocate":
        return SQL_SESSION | SQL_DEALLOCATE | SQL_PINS
    # DO, CALL, EXECUTE, LOAD and anything the lexer does not know.
    return SQL_ALL


def _set(rest: list[bytes], names: list[str] | None) -> int:
    """SET ...: rest follows the SET keyword."""
    if rest[1:2] == [b"."]:
        # `SET local.tenant`, `SET time.x`: a custom setting named like a keyword.
        return _set_named(_dotted_name(rest), rest, names)
    second = rest[0] if rest else b""
    if second in (b"local", b"transaction", b"constraints"):
        if second == b"local" and rest[1:2] in ([b"search_path"], [b"schema"]):
            return SQL_PATH
        return 0  # over at the end of the transaction
    flags = SQL_SESSION | SQL_SETTINGS
    if second == b"session":
        rest = rest[1:]
        if rest[1:2] == [b"."]:
            return _set_named(_dotted_name(rest), rest, names)
        third = rest[0] if rest else b""
        if b"characteristics" in rest:
            # SET SESSION [SESSION] CHARACTERISTICS AS TRANSACTION ...: several settings.
            return flags | SQL_FULL
        if third == b"authorization":
            _add_names(names, (b"session_authorization", b"role"))
            return flags | (SQL_FULL if b"default" in rest else 0)
    special = _SPECIAL_SET.get(rest[0] if rest else b"")
    if special is not None:
        _add_names(names, special)
        return flags | (SQL_FULL if b"default" in rest else 0)
    return _set_named(_dotted_name(rest), rest, names)


def _set_named(name: bytes, rest: list[bytes], names: list[str] | None) -> int:
    flags = SQL_SESSION | SQL_SETTINGS
    if not name:
        return flags | SQL_FULL  # a name the lexer cannot read: read every setting
    if _unreadable(name):
        return SQL_ALL
    _add_names(names, (name,))
    return flags | (SQL_FULL if b"default" in rest else 0)


def _reset(rest: list[bytes], names: list[str] | None) -> int:
    """RESET ...: rest follows the RESET keyword."""
    flags = SQL_SESSION | SQL_SETTINGS | SQL_FULL
    second = rest[0] if rest else b""
    if rest[1:2] == [b"."]:
        name = _dotted_name(rest)
        if _unreadable(name):
            return SQL_ALL
        if name:
            _add_names(names, (name,))
    elif second == b"session":
        _add_names(names, (b"session_authorization", b"role"))
    elif second in _SPECIAL_SET:
        _add_names(names, _SPECIAL_SET[second])
    elif second != b"all":
        name = _dotted_name(rest)
        if _unreadable(name):
            return SQL_ALL
        if name:
            _add_names(names, (name,))
    return flags


def _dotted_name(tokens: list[bytes]) -> bytes:
    """`a`, `a.b`, `"A"."b"` at the start of tokens, as PostgreSQL names the setting."""
    parts: list[bytes] = []
    expect_part = True
    for t in tokens:
        if expect_part:
            if t[:1] == b'"':
                parts.append(t[1:])
            elif _WORD.fullmatch(t):
                parts.append(t)
            else:
                return b""
            expect_part = False
        elif t == b".":
            expect_part = True
        else:
            break
    return b".".join(parts) if parts and not expect_part else b""


def _quoted(tok: bytes | bytearray) -> bytes:
    body = bytes(tok[1:-1] if len(tok) > 1 and tok[-1] == 0x22 else tok[1:])
    return body.replace(b'""', b'"')


def _literal(tok: bytes | bytearray) -> bytes:
    raw = bytes(tok)
    if raw[:1] in (b"e", b"E"):
        if b"\\" in raw:
            return b""  # escapes: not worth decoding for a setting name
        raw = raw[1:]
    body = raw[1:-1] if len(raw) > 1 and raw.endswith(b"'") else raw[1:]
    return body.replace(b"''", b"'").lower()


def _unreadable(name: bytes) -> bool:
    """A setting name the proxy cannot read back by name: `seed`, or a non-ASCII one (whose
    bytes depend on the session's client_encoding, and which PostgreSQL folds as ASCII)."""
    return not name.isascii() or name.lower() in _UNREPLAYABLE


def _add_name(names: list[str], name: bytes) -> None:
    if len(names) < MAX_NAMES:
        text = name.lower().decode("ascii", "replace")
        if text not in names:
            names.append(text)


def _add_names(names: list[str] | None, new: tuple[bytes, ...]) -> None:
    if names is not None:
        for n in new:
            _add_name(names, n)


# --- DEALLOCATE / DISCARD, read by the proxy itself -------------------------------------------


def _statements(sql: str) -> list[list[tuple[int, bytes]]] | None:
    """The text's statements as lists of (kind, token), comments and whitespace dropped; None
    when the text is too long to look into."""
    raw = sql.encode("utf-8", "surrogatepass")
    if len(raw) > CLASSIFY_LIMIT:
        return None
    out: list[list[tuple[int, bytes]]] = [[]]
    p, end = 0, len(raw)
    budget = MAX_STEPS
    while p < end:
        budget -= 1
        if budget < 0:
            return None
        m = _TOKEN.match(raw, p, end)
        assert m is not None
        kind = m.lastindex or 0
        p = m.end()
        if kind == _T_WS or kind == _T_LC:
            continue
        if kind == _T_BC:
            p = _comment_end(raw, p, end)
            if p < 0:
                return None
            continue
        tok = m.group()
        if kind == _T_DQ:
            close = raw.find(tok, p, end)
            p = end if close < 0 else close + len(tok)
        if kind == _T_CHAR and tok == b";":
            out.append([])
            continue
        out[-1].append((kind, tok))
    return out


def deallocation(sql: str) -> tuple[tuple[bool, str] | None, bool]:
    """(parse_deallocate(sql), drops_all_statements(sql)), lexing the text once."""
    stmts = _statements(sql)
    return _parse_deallocate(sql, stmts), _drops_all(stmts)


def drops_all_statements(sql: str) -> bool:
    """True when the text runs DISCARD ALL or DEALLOCATE [PREPARE] ALL."""
    return _drops_all(_statements(sql))


def _drops_all(stmts: list[list[tuple[int, bytes]]] | None) -> bool:
    if stmts is None:
        return False
    for toks in stmts:
        words = [t.lower() if k == _T_WORD else b"" for k, t in toks[:3]]
        if words[:2] == [b"discard", b"all"] and len(toks) == 2:
            return True
        if words[:1] == [b"deallocate"]:
            rest = words[2:] if words[1:2] == [b"prepare"] else words[1:]
            if rest == [b"all"] and len(toks) == len(words):
                return True
    return False


def parse_deallocate(sql: str) -> tuple[bool, str] | None:
    """For a text that is exactly one DEALLOCATE without comments: (is ALL, name); else None."""
    return _parse_deallocate(sql, _statements(sql))


def _parse_deallocate(
    sql: str, stmts: list[list[tuple[int, bytes]]] | None
) -> tuple[bool, str] | None:
    if "--" in sql or "/*" in sql:
        return None
    if stmts is None or not stmts[0] or any(stmts[1:2]) or len(stmts) > 2:
        return None
    toks = stmts[0]
    if toks[0][0] != _T_WORD or toks[0][1].lower() != b"deallocate":
        return None
    rest = toks[1:]
    if len(rest) == 2 and rest[0][0] == _T_WORD and rest[0][1].lower() == b"prepare":
        rest = rest[1:]
    if len(rest) != 1:
        return None
    kind, tok = rest[0]
    if kind == _T_WORD:
        if tok.lower() == b"all":
            return True, ""
        # An unquoted name folds to lower case as PostgreSQL folds identifiers: ASCII only.
        return False, tok.decode("utf-8", "surrogatepass").translate(_ASCII_LOWER)
    if kind == _T_QI and len(tok) > 2 and tok.endswith(b'"'):
        return False, _quoted(tok).decode("utf-8", "surrogatepass")
    return None


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
