"""Which stored backups still need which age key: when an old key may be retired.

Rotating the encryption key is adding the new recipient (backups are then
written to both keys, readable with either), then removing the old one from
the recipients. The old private key must be kept until nothing stored needs
it. This module answers that from what storage holds:

* **Dumps and base backups**: each manifest lists the recipients its objects
  were encrypted to (``Encoding.recipients``). A backup *needs* a retired
  key when none of its recipients is configured any more: it is readable
  only with retired keys.
* **WAL** has no manifest, and an age header does not name its recipients
  (X25519 stanzas carry no public key). What is known: WAL is encrypted to
  the recipients of the process that stores it, and a backup that lists a
  configured key was made after that key was configured. So encrypted WAL
  stored *before* the first backup of the newest unbroken run of backups
  that list a configured key may be encrypted to retired keys only, and is
  reported as such; WAL stored after it is taken to be readable with the
  configured keys. That holds when the WAL writer (the sidecar) was
  restarted with the new recipients before that backup was taken: the
  runbook's rotation procedure does exactly that, and the exact check below
  does not rely on it.
* **Timeline history files** are WAL too, but ``expire`` keeps them for good
  and every restore reads them all: one encrypted to a retired key only
  blocks retirement until it is stored unencrypted (the runbook's §10 says how; new ones always are).

The exact check, :func:`unopenable`, runs where a private key is (the drill
host, with only the keys that stay): it tries the identities on the header of
every encrypted object stored (:func:`p88backup.agefile.opens`) and lists the
objects they cannot open. An empty list means the retired key can go.

:func:`key_report` is pure; the readers below it do the I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from p88backup.catalog.backups import Catalog
from p88backup.catalog.layout import WAL_PREFIX, wal_name_of_key
from p88backup.storage import Storage


@dataclass(frozen=True)
class EncryptedBackup:
    """A stored backup and the recipients its manifest lists (empty: not encrypted)."""

    kind: str
    id: str
    started_at: datetime
    recipients: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.kind} {self.id}"


@dataclass(frozen=True)
class StoredWal:
    name: str
    encrypted: bool
    modified: datetime | None


@dataclass
class KeyUse:
    key: str
    configured: bool
    backups: list[str] = field(default_factory=list)  # backups whose manifest lists it
    only_retired: list[str] = field(default_factory=list)  # ... and no configured key: they need it
    needed: bool = True
    why: str = ""


@dataclass
class WalKeys:
    """Encrypted WAL that may be readable only with keys no longer configured."""

    since: datetime | None  # WAL stored from then on is encrypted to the configured keys
    suspect: list[str] = field(default_factory=list)
    history: list[str] = field(default_factory=list)  # the suspects that are .history files


@dataclass
class KeyReport:
    configured: list[str]
    keys: list[KeyUse]
    wal: WalKeys
    bad_manifests: list[str] = field(default_factory=list)

    def use(self, key: str) -> KeyUse | None:
        return next((k for k in self.keys if k.key == key), None)


def switch_time(backups: Iterable[EncryptedBackup], configured: set[str]) -> datetime | None:
    """When the configured keys took over: the start of the oldest backup of the newest unbroken
    run of encrypted backups that each list a configured key (None: no such run)."""
    since: datetime | None = None
    encrypted = sorted((b for b in backups if b.recipients), key=lambda b: b.started_at)
    for b in reversed(encrypted):
        if not configured.intersection(b.recipients):
            break
        since = b.started_at
    return since


def key_report(
    backups: list[EncryptedBackup],
    wal: list[StoredWal],
    configured: list[str],
    bad_manifests: list[str] | None = None,
    asked: list[str] | None = None,
) -> KeyReport:
    """Every key that manifests list, the configuration names or the caller ``asked`` about, and
    whether it is still needed."""
    mine = set(configured)
    since = switch_time(backups, mine)
    suspects = [w for w in wal if w.encrypted and (since is None or w.modified is None or w.modified < since)]
    wal_keys = WalKeys(since, [w.name for w in suspects], [w.name for w in suspects if w.name.endswith(".history")])
    seen = list(dict.fromkeys([*configured, *(k for b in backups for k in b.recipients), *(asked or [])]))
    uses = []
    for key in seen:
        use = KeyUse(key, key in mine)
        for b in backups:
            if key in b.recipients:
                use.backups.append(b.label)
                if not mine.intersection(b.recipients):
                    use.only_retired.append(b.label)
        if use.configured:
            use.why = "configured: new backups are encrypted to it"
        elif use.only_retired:
            use.why = (
                f"{len(use.only_retired)} backup(s) readable only with keys no longer configured "
                f"(oldest: {use.only_retired[0]}); expire removes them in time"
            )
        elif wal_keys.history:
            use.why = (
                f"{len(wal_keys.history)} timeline history file(s) stored before the configured keys took over"
                " may be encrypted to it; expire keeps history files: store them unencrypted (runbook §10)"
            )
        elif wal_keys.suspect:
            use.why = (
                f"{len(wal_keys.suspect)} encrypted WAL file(s) stored before the configured keys took over"
                " may be encrypted to it; expire removes them with the backups that need them"
            )
        elif bad_manifests:
            use.why = f"{len(bad_manifests)} manifest(s) could not be read: their recipients are unknown"
        else:
            use.needed = False
            use.why = "no stored backup or WAL needs it"
        uses.append(use)
    return KeyReport(list(configured), uses, wal_keys, list(bad_manifests or []))


# -- reading storage ------------------------------------------------------------------------------


def stored_backups(storage: Storage) -> tuple[list[EncryptedBackup], list[str]]:
    """(every dump and base backup with its recipients, keys of manifests that could not be read)."""
    catalog = Catalog(storage)
    found: list[EncryptedBackup] = []
    bad: list[str] = []
    for kind in ("dump", "basebackup"):
        manifests, broken = catalog.scan(kind)
        bad += [b.key for b in broken]
        for m in manifests:
            recipients = tuple(m.encoding.recipients) if m.encoding.encryption == "age" else ()
            found.append(EncryptedBackup(m.kind, m.id, m.started_at, recipients))
    return found, bad


def stored_wal(storage: Storage) -> list[StoredWal]:
    out = []
    for obj in storage.list(WAL_PREFIX):
        name = wal_name_of_key(obj.key)
        if name is not None:
            out.append(StoredWal(name, obj.key.endswith(".age"), obj.modified))
    return out


def encrypted_keys(storage: Storage) -> Iterator[str]:
    """Every stored object that is age-encrypted: backup objects of readable manifests, and WAL."""
    catalog = Catalog(storage)
    for kind in ("dump", "basebackup"):
        manifests, _ = catalog.scan(kind)
        for m in manifests:
            if m.encoding.encryption == "age":
                yield from (o.key for o in m.objects)
    for obj in storage.list(WAL_PREFIX):
        if obj.key.endswith(".age"):
            yield obj.key


def unopenable(storage: Storage, identities: list[Any]) -> tuple[int, list[str]]:
    """(encrypted objects tried, keys of those none of ``identities`` can open)."""
    from p88backup.agefile import opens

    tried, closed = 0, []
    for key in encrypted_keys(storage):
        tried += 1
        with storage.open(key) as fh:
            if not opens(fh, identities, what=key):
                closed.append(key)
    return tried, closed
