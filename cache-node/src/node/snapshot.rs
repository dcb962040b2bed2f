//! Snapshots: a node writes its entries to a file when it stops and reads them back when it starts,
//! so a restarted node serves hits at once. Entries carry their stamps in their keys, so an entry
//! that was current when written is either still current or unreachable: never stale.
//!
//! The format: `VENEER-SNAPSHOT 1\n`, then per entry its key length and value length (u32,
//! big-endian), its time left in milliseconds (u64; `u64::MAX`: none), the key and the value.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::time::Duration;

use super::store::{Store, When};

const MAGIC: &[u8] = b"VENEER-SNAPSHOT 1\n";

/// Writes every live entry of `store` to `path` (through a temporary file, renamed into place, so
/// a crash mid-write leaves the previous snapshot). Returns the entries written.
pub fn save(store: &Store, path: &Path) -> io::Result<u64> {
    let partial = path.with_extension("partial");
    let mut out = BufWriter::new(File::create(&partial)?);
    out.write_all(MAGIC)?;
    let mut written = 0u64;
    let mut failed = None;
    store.for_each(|key, value, left| {
        if failed.is_some() {
            return;
        }
        let ms = left.map_or(u64::MAX, |d| d.as_millis() as u64);
        let record = (|| {
            out.write_all(&(key.len() as u32).to_be_bytes())?;
            out.write_all(&(value.len() as u32).to_be_bytes())?;
            out.write_all(&ms.to_be_bytes())?;
            out.write_all(key)?;
            out.write_all(value)
        })();
        match record {
            Ok(()) => written += 1,
            Err(e) => failed = Some(e),
        }
    });
    if let Some(e) = failed {
        return Err(e);
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&partial, path)?;
    Ok(written)
}

/// Loads the entries of the snapshot at `path` into `store`; returns how many. A missing file is
/// no snapshot (0); a damaged one is an error that says where.
pub fn load(store: &Store, path: &Path) -> io::Result<u64> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut input = BufReader::new(file);
    let mut magic = vec![0; MAGIC.len()];
    input.read_exact(&mut magic)?;
    if magic != MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a veneer-cache-node snapshot",
        ));
    }
    let mut loaded = 0u64;
    loop {
        let mut header = [0u8; 16];
        match input.read_exact(&mut header[..1]) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(loaded),
            Err(e) => return Err(e),
        }
        input.read_exact(&mut header[1..])?;
        let key_len = u32::from_be_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let value_len = u32::from_be_bytes(header[4..8].try_into().expect("4 bytes")) as usize;
        let ms = u64::from_be_bytes(header[8..].try_into().expect("8 bytes"));
        let mut key = vec![0; key_len];
        let mut value = vec![0; value_len];
        input
            .read_exact(&mut key)
            .and_then(|()| input.read_exact(&mut value))
            .map_err(|e| {
                io::Error::new(e.kind(), format!("entry {} is cut short: {e}", loaded + 1))
            })?;
        let ttl = (ms != u64::MAX).then(|| Duration::from_millis(ms));
        let _ = store.set(&key, &value, ttl, When::Always);
        loaded += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_brings_back_what_was_live() {
        let dir = std::env::temp_dir().join(format!("veneer-snapshot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.snapshot");
        let store = Store::new(1 << 20);
        store.set(b"a", b"1", None, When::Always).unwrap();
        store
            .set(b"b", b"2", Some(Duration::from_secs(60)), When::Always)
            .unwrap();
        store
            .set(b"gone", b"3", Some(Duration::ZERO), When::Always)
            .unwrap();
        assert_eq!(save(&store, &path).unwrap(), 2);
        let restored = Store::new(1 << 20);
        assert_eq!(load(&restored, &path).unwrap(), 2);
        assert_eq!(restored.get(b"a").as_deref(), Some(&b"1"[..]));
        assert_eq!(restored.get(b"b").as_deref(), Some(&b"2"[..]));
        assert!(restored.ttl(b"b").unwrap().unwrap() <= Duration::from_secs(60));
        assert_eq!(restored.get(b"gone"), None);
        assert_eq!(load(&restored, &dir.join("absent")).unwrap(), 0);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
