"""The grammar of RFC 8461 §3.1 (TXT record) and §3.2 (policy file), one regex per ABNF rule.

Each rule is quoted from the RFC (RFC 7405 ``%s`` means case-sensitive), then written as a small regex named
after it; bigger rules are composed from smaller ones. Where mtasts bends a rule, the comment says how and
points to the decisions table (``docs/decisions.md``).

Core rules from RFC 5234 Appendix B.1::

    ALPHA = %x41-5A / %x61-7A   ; A-Z / a-z
    DIGIT = %x30-39
    WSP   = SP / HTAB

Python's ``re`` with ``str`` patterns: the character classes below are written out in ASCII on purpose
(``\\d`` and ``\\w`` would match non-ASCII digits and letters).
"""

from __future__ import annotations

import re

ALPHA = r"[A-Za-z]"
DIGIT = r"[0-9]"
ALPHANUM = r"[A-Za-z0-9]"
WSP = r"[ \t]"

# --------------------------------------------------------------------------------------------------------------
# RFC 5321 §4.1.2 (referenced by RFC 8461 §3.2 for ``mx`` values)
#
#   Domain     = sub-domain *("." sub-domain)
#   sub-domain = Let-dig [Ldh-str]
#   Let-dig    = ALPHA / DIGIT
#   Ldh-str    = *( ALPHA / DIGIT / "-" ) Let-dig
#
# mtasts adds the DNS length limits (RFC 1035 §2.3.4: 63 octets a label, 253 a name without the final dot),
# checked in code, and (decisions table) rejects a Domain whose last label is all digits: a TLD is never
# numeric (RFC 3696 §2), so ``192.0.2.1`` is an address, not an MX name.
# --------------------------------------------------------------------------------------------------------------
LET_DIG = ALPHANUM
LDH_STR = r"[A-Za-z0-9-]*" + LET_DIG
SUB_DOMAIN = LET_DIG + r"(?:" + LDH_STR + r")?"
DOMAIN = SUB_DOMAIN + r"(?:\." + SUB_DOMAIN + r")*"

MAX_LABEL_LENGTH = 63
MAX_NAME_LENGTH = 253

# --------------------------------------------------------------------------------------------------------------
# RFC 8461 §3.1 — the ``_mta-sts`` TXT record
#
#   sts-text-record = sts-version 1*(sts-field-delim sts-field) [sts-field-delim]
#   sts-field       = sts-id / sts-extension        ; Note that sts-id record is required.
#   sts-field-delim = *WSP ";" *WSP
#   sts-version     = %s"v=STSv1"
#   sts-id          = %s"id=" 1*32(ALPHA / DIGIT)   ; id=...
#   sts-extension   = sts-ext-name "=" sts-ext-value ; name=value
#   sts-ext-name    = (ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".")
#   sts-ext-value   = 1*(%x21-3A / %x3C / %x3E-7E)  ; chars excluding "=", ";", SP, and control chars
#
# ``sts-id`` is also a valid ``sts-extension`` (``id`` is a valid ext-name). mtasts reads every field named
# ``id`` as an sts-id: the first one must match ``sts-id`` (``v=STSv1; id=a_b; id=1`` is invalid: decisions
# table); later ``id`` fields are ignored like any duplicate (§3.2, last paragraph).
# --------------------------------------------------------------------------------------------------------------
STS_FIELD_DELIM = WSP + r"*;" + WSP + r"*"
STS_VERSION = r"v=STSv1"
STS_ID_VALUE = r"[A-Za-z0-9]{1,32}"
STS_ID = r"id=" + STS_ID_VALUE
STS_EXT_NAME = ALPHANUM + r"[A-Za-z0-9_.-]{0,31}"
STS_EXT_VALUE = r"[\x21-\x3a\x3c\x3e-\x7e]+"
STS_EXTENSION = STS_EXT_NAME + r"=" + STS_EXT_VALUE
STS_FIELD = r"(?:" + STS_ID + r"|" + STS_EXTENSION + r")"
# sts-text-record is matched field by field (txt.py splits on ";", which no field may contain): one regex for
# the whole record backtracks exponentially, because "id=1" reads both as sts-id and as sts-extension and a
# failing match retries every combination — 30 fields would take minutes (found by benchmarks/fuzz.py).
sts_field = re.compile(STS_FIELD)
sts_id_value = re.compile(STS_ID_VALUE)

#: RFC 8461 §3.1: "records that do not begin with "v=STSv1;" are discarded". Erratum 6285 notes that the
#: ABNF allows WSP before that ";" (``v=STSv1 ; id=1``); mtasts keeps such a record as an STS record (it is
#: ABNF-valid), and discards everything else, ``v=STSv10; ...`` included.
sts_record_prefix = re.compile(STS_VERSION + WSP + r"*;")

# --------------------------------------------------------------------------------------------------------------
# RFC 8461 §3.2 — the policy file
#
#   sts-policy-record        = sts-policy-field *WSP
#                              *(sts-policy-term sts-policy-field *WSP)
#                              [sts-policy-term]
#   sts-policy-field         = sts-policy-version /      ; required once
#                              sts-policy-mode    /      ; required once
#                              sts-policy-max-age /      ; required once
#                              sts-policy-mx /
#                              ; required at least once, except when
#                              ; mode is "none"
#                              sts-policy-extension      ; other fields
#   sts-policy-field-delim   = ":" *WSP
#   sts-policy-version-field = %s"version"
#   sts-policy-version-value = %s"STSv1"
#   sts-policy-mode-field    = %s"mode"
#   sts-policy-mode-value    =  %s"testing" / %s"enforce" / %s"none"
#   sts-policy-mx-field      = %s"mx"
#   sts-policy-mx-value      = ["*."] Domain
#   sts-policy-max-age-field = %s"max_age"
#   sts-policy-max-age-value = 1*10(DIGIT)
#   sts-policy-extension     = sts-policy-ext-name sts-policy-field-delim sts-policy-ext-value
#   sts-policy-ext-name      = (sts-policy-alphanum)
#                              *31(sta-policy-alphanum / "_" / "-" / ".")
#   sts-policy-term          = LF / CRLF
#   sts-policy-ext-value     = sts-policy-vchar
#                              [*(%x20 / sts-policy-vchar)
#                              sts-policy-vchar]
#                              ; chars, including UTF-8 [RFC3629],
#                              ; excluding CTLs and no
#                              ; leading/trailing spaces
#   sts-policy-alphanum      = ALPHA / DIGIT
#   sts-policy-vchar         = %x21-7E / UTF8-2 / UTF8-3 / UTF8-4
#
# Every known field has the shape of an extension too (``mode: bogus`` is a syntactically valid extension
# line). mtasts reads the first occurrence of a known key strictly (an invalid ``mode`` value makes the policy
# invalid) and ignores later occurrences whatever they hold (§3.2 "all entries except for the first SHALL be
# ignored"). Bends, each in the decisions table: blank and whitespace-only lines are ignored; one leading BOM
# is stripped; one trailing dot on an ``mx`` value is stripped; ``max_age`` above 31557600 is clamped.
# --------------------------------------------------------------------------------------------------------------
STS_POLICY_FIELD_DELIM = r":" + WSP + r"*"
STS_POLICY_EXT_NAME = ALPHANUM + r"[A-Za-z0-9_.-]{0,31}"
# sts-policy-vchar: %x21-7E and any non-ASCII code point (the text is already strictly UTF-8 decoded, so only
# valid UTF8-2/3/4 sequences remain). CTLs (%x00-1F, %x7F) are excluded; so are lone surrogates, which a str
# argument may carry but UTF-8 cannot encode.
STS_POLICY_VCHAR = r"[\x21-\x7e\x80-\ud7ff\ue000-\U0010ffff]"
STS_POLICY_EXT_VALUE = STS_POLICY_VCHAR + r"(?:[ " + STS_POLICY_VCHAR[1:-1] + r"]*" + STS_POLICY_VCHAR + r")?"
STS_POLICY_MX_VALUE = r"(?:\*\.)?" + DOMAIN
STS_POLICY_MAX_AGE_VALUE = DIGIT + r"{1,10}"

#: The start of one policy line: ``name ":" *WSP``. The rest of the line, less the record-level ``*WSP`` that
#: may follow each field, is the value, checked against the rule of its key. (Splitting the value off with
#: ``str.rstrip`` rather than a lazy ``(.*?)WSP*$`` keeps the parse linear on lines full of spaces.)
sts_policy_field_start = re.compile(r"(" + STS_POLICY_EXT_NAME + r")" + STS_POLICY_FIELD_DELIM)
sts_policy_ext_value = re.compile(STS_POLICY_EXT_VALUE)
sts_policy_mx_value = re.compile(STS_POLICY_MX_VALUE)
sts_policy_max_age_value = re.compile(STS_POLICY_MAX_AGE_VALUE)
domain = re.compile(DOMAIN)
ldh_label = re.compile(SUB_DOMAIN)  # one label of a Domain (RFC 5321 §4.1.2 sub-domain)
sts_record_prefix_bytes = re.compile(sts_record_prefix.pattern.encode("ascii"))
sts_policy_ext_name = re.compile(STS_POLICY_EXT_NAME)
