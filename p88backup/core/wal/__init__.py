"""The WAL archive: names and LSN arithmetic, archive/restore commands, streaming, verification, restore points."""
