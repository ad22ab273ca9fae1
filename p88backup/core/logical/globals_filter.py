"""Which statements of a dump's globals (``pg_dumpall --globals-only``) a restore applies.

``restore --dump`` usually runs next to production, on a server whose roles
and tablespaces are live. The rule: apply only statements whose subject was
created by this restore. Roles and tablespaces that exist are left exactly
as they are (no password reset, no new settings, comments, labels or
privileges), and a role membership is applied only when its member is a role
created now: granting an existing role to a new one is what the new role
needs, but granting a new role to an existing one would change what a live
role may do. Such statements are returned as skipped, with the reason, for
the operator to apply by hand; so is any statement this module does not
recognise.

Covers what pg_dumpall 15 to 18 emits: ``CREATE/ALTER ROLE``, ``ALTER ROLE
… SET``, ``COMMENT ON`` and ``SECURITY LABEL … ON ROLE/TABLESPACE``,
``GRANT role TO member [WITH ADMIN|INHERIT|SET …] [GRANTED BY g]``, ``GRANT …
ON PARAMETER``, ``CREATE/ALTER TABLESPACE``, ``GRANT/REVOKE … ON
TABLESPACE``, session ``SET``/``RESET`` and psql's ``\\restrict`` lines.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

# A token: a quoted identifier, a string literal (E'' with backslash escapes,
# '' without: the dump sets standard_conforming_strings = on), a word, or
# any other single character.
_TOKEN = re.compile(
    r"""(?P<qident>"(?:[^"]|"")*")
      | (?P<estring>[Ee]'(?:[^'\\]|''|\\.)*')
      | (?P<string>'(?:[^']|'')*')
      | (?P<word>[A-Za-z_][A-Za-z0-9_$]*)
      | (?P<space>\s+)
      | (?P<other>.)""",
    re.VERBOSE | re.DOTALL,
)
_META_KEPT = ("\\restrict", "\\unrestrict")  # psql guard lines pg_dumpall writes since the August 2025 minors
_GRANTEE_END = {"WITH", "GRANTED", "CASCADE", "RESTRICT"}

Subject = Literal["session", "role", "tablespace", "membership", "parameter", "unknown"]


@dataclass(frozen=True)
class Token:
    kind: str  # qident, estring, string, word, other
    text: str
    start: int
    end: int

    @property
    def keyword(self) -> str:
        return self.text.upper() if self.kind == "word" else ""

    @property
    def name(self) -> str | None:
        """The identifier this token names (folded like PostgreSQL does), or None."""
        if self.kind == "qident":
            return self.text[1:-1].replace('""', '"')
        if self.kind == "word":
            return self.text.lower()
        return None


@dataclass(frozen=True)
class Statement:
    text: str  # as in the dump, with its line end
    subject: Subject
    names: tuple[str, ...] = ()  # role or tablespace it is about; a grant's roles granted
    members: tuple[str, ...] = ()  # a grant's grantees (role names; PUBLIC and the like as written)
    creates: bool = False
    grantor: Token | None = None  # GRANTED BY's role
    grantor_clause: tuple[int, int] | None = None  # where "GRANTED BY role" is in text


@dataclass(frozen=True)
class Skipped:
    statement: str  # one line, string literals masked
    reason: str


@dataclass
class GlobalsPlan:
    sql: str  # what to apply
    roles_created: list[str] = field(default_factory=list)
    roles_kept: list[str] = field(default_factory=list)  # existing roles left unchanged
    skipped: list[Skipped] = field(default_factory=list)  # not applied: the operator decides


def split_statements(sql: str) -> Iterator[str]:
    """Statements, comment lines and psql meta-command lines, each with its line end.

    A statement ends at a semicolon outside quotes; a COMMENT's string may
    span lines.
    """
    pos, n = 0, len(sql)
    while pos < n:
        line_end = sql.find("\n", pos)
        line_end = n if line_end < 0 else line_end + 1
        head = sql[pos:line_end].lstrip()
        if not head or head.startswith(("--", "\\")):
            yield sql[pos:line_end]
            pos = line_end
            continue
        end = pos
        for m in _TOKEN.finditer(sql, pos):
            end = m.end()
            if m.group("other") == ";":
                break
        nl = sql.find("\n", end)
        if nl >= 0 and not sql[end:nl].strip():
            end = nl + 1  # the statement's line end goes with it
        yield sql[pos:end]
        pos = end


def tokens(text: str) -> list[Token]:
    out = []
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup or "other"
        if kind == "space":
            continue
        if kind == "other" and m.group() == "-" and text.startswith("--", m.start()):
            break  # a trailing comment
        out.append(Token(kind, m.group(), m.start(), m.end()))
    return out


def _names(toks: list[Token]) -> tuple[str, ...]:
    """Comma-separated identifiers; PUBLIC, CURRENT_USER and the like as upper-case words."""
    out: list[str] = []
    for t in toks:
        if t.text == ",":
            continue
        if t.keyword == "GROUP":  # GRANT … TO GROUP r: an old spelling of TO r
            continue
        if t.kind == "word" and t.keyword in {"PUBLIC", "CURRENT_USER", "CURRENT_ROLE", "SESSION_USER"}:
            out.append(t.keyword)
        elif t.name is not None:
            out.append(t.name)
    return tuple(out)


def classify(text: str) -> Statement:
    """What one statement of a globals dump is about."""
    stripped = text.strip()
    if not stripped or stripped.startswith("--"):
        return Statement(text, "session")
    if stripped.startswith("\\"):
        return Statement(text, "session" if stripped.split()[0] in _META_KEPT else "unknown")
    toks = [t for t in tokens(text) if t.text != ";"]
    kw = [t.keyword for t in toks]
    if kw[:1] in (["SET"], ["RESET"]):
        return Statement(text, "session")
    # CREATE/ALTER ROLE r, COMMENT ON ROLE r, SECURITY LABEL [FOR p] ON ROLE r; the same for TABLESPACE
    head = 2 if kw[:1] in (["CREATE"], ["ALTER"]) else None
    if kw[:2] == ["COMMENT", "ON"]:
        head = 3
    if kw[:2] == ["SECURITY", "LABEL"]:
        head = kw.index("ON") + 2 if "ON" in kw else None
    if head is not None and head < len(toks) and kw[head - 1] in ("ROLE", "TABLESPACE"):
        name = toks[head].name
        if name is not None and toks[head].keyword != "ALL":  # ALTER ROLE ALL SET: every role
            subject: Subject = "role" if kw[head - 1] == "ROLE" else "tablespace"
            return Statement(text, subject, (name,), creates=kw[0] == "CREATE")
    if kw[:1] in (["GRANT"], ["REVOKE"]):
        return _classify_grant(text, toks, kw)
    return Statement(text, "unknown")


def _classify_grant(text: str, toks: list[Token], kw: list[str]) -> Statement:
    to = "TO" if kw[0] == "GRANT" else "FROM"
    if to not in kw:
        return Statement(text, "unknown")
    i_to = kw.index(to)
    end = next((i for i in range(i_to + 1, len(kw)) if kw[i] in _GRANTEE_END), len(kw))
    members = _names(toks[i_to + 1 : end])
    grantor = grantor_clause = None
    if "GRANTED" in kw[end:]:
        i = kw.index("GRANTED", end)
        if kw[i + 1 : i + 2] == ["BY"] and i + 2 < len(toks):
            grantor = toks[i + 2]
            grantor_clause = (toks[i].start, grantor.end)
    if "ON" in kw[:i_to]:
        i_on = kw.index("ON")
        what = kw[i_on + 1] if i_on + 1 < i_to else ""
        if what == "TABLESPACE":
            return Statement(text, "tablespace", _names(toks[i_on + 2 : i_to]), members)
        if what == "PARAMETER":
            return Statement(text, "parameter", (), members)
        return Statement(text, "unknown")
    # Role membership: GRANT r TO m / REVOKE [ADMIN|INHERIT|SET OPTION FOR] r FROM m
    start = 1
    if kw[0] == "REVOKE" and kw[2:4] == ["OPTION", "FOR"]:
        start = 4
    roles = _names(toks[start:i_to])
    return Statement(text, "membership", roles, members, grantor=grantor, grantor_clause=grantor_clause)


def one_line(text: str) -> str:
    """A statement for a report: on one line, string literals masked (a comment, a password)."""
    out, pos = [], 0
    for t in tokens(text):
        if t.kind in ("string", "estring"):
            out += [text[pos : t.start], "'…'"]
            pos = t.end
    out.append(text[pos:])
    return " ".join("".join(out).split())


def filter_globals(
    sql: str,
    roles: set[str],
    tablespaces: set[str],
    superusers: set[str] | frozenset[str] = frozenset(),
) -> GlobalsPlan:
    """The statements of ``sql`` this restore applies, given the server's existing
    ``roles`` (``superusers`` among them) and ``tablespaces``."""
    stmts = [classify(s) for s in split_statements(sql)]
    plan = GlobalsPlan("")
    new_roles = {s.names[0] for s in stmts if s.subject == "role" and s.creates and s.names[0] not in roles}
    new_spaces = {
        s.names[0] for s in stmts if s.subject == "tablespace" and s.creates and s.names[0] not in tablespaces
    }
    out: list[str] = []

    def skip(s: Statement, reason: str) -> None:
        plan.skipped.append(Skipped(one_line(s.text), reason))

    for s in stmts:
        if s.subject == "session":
            out.append(s.text)
        elif s.subject == "role":
            name = s.names[0]
            if name in new_roles:
                out.append(s.text)
                if s.creates and name not in plan.roles_created:
                    plan.roles_created.append(name)
            elif name in roles:
                if name not in plan.roles_kept:
                    plan.roles_kept.append(name)
            else:
                skip(s, f"role {name} is neither created by this restore nor on the server")
        elif s.subject == "tablespace":
            if s.names and all(n in new_spaces for n in s.names):
                out.append(s.text)
            elif any(m in new_roles for m in s.members):
                skip(s, f"it would change the existing tablespace {', '.join(s.names)}")
        elif s.subject == "membership":
            if s.members and all(m in new_roles for m in s.members):
                out.append(_without_foreign_grantor(s, new_roles, superusers))
            elif any(r in new_roles for r in s.names + s.members):
                existing = ", ".join(m for m in s.members if m not in new_roles)
                skip(s, f"it would change the existing role {existing}")
        elif s.subject == "parameter":
            if s.members and all(m in new_roles for m in s.members):
                out.append(s.text)
            elif any(m in new_roles for m in s.members):
                existing = ", ".join(m for m in s.members if m not in new_roles)
                skip(s, f"it would change the existing role {existing}")
        else:
            skip(s, "not a statement restore --dump knows to be safe")
    plan.sql = "".join(out)
    return plan


def _without_foreign_grantor(s: Statement, new_roles: set[str], superusers: set[str] | frozenset[str]) -> str:
    """The grant, minus ``GRANTED BY g`` unless ``g`` is a superuser or was created now.

    Since PostgreSQL 16 the grantor must hold ADMIN on the role; an existing
    role got that from a grant this restore does not apply, so the grant
    would fail. Without the clause it is recorded as made by the restoring
    superuser (the bootstrap superuser on 16+, as pg_dumpall's own output).
    """
    if s.grantor is None or s.grantor_clause is None:
        return s.text
    name = s.grantor.name
    if name in new_roles or name in superusers:
        return s.text
    start, end = s.grantor_clause
    return s.text[:start].rstrip(" ") + s.text[end:]
