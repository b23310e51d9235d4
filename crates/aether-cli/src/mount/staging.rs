//! Content written through the mount, per inode, until (and after) the session has it.
//!
//! Small files live in memory. A `cp -r` of a source tree then makes no local file per file:
//! on ext4 a create and delete of a staging file cost more than the FUSE round trips of the
//! copy itself (inode allocation scans past recently deleted inodes). A file that grows past
//! [`MEMORY_FILE_BYTES`], or any file once the memory budget is spent, moves to a sparse file
//! in the staging directory and stays there.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use super::content::open_rw;

/// Largest file kept in memory; larger ones are staged on disk.
pub const MEMORY_FILE_BYTES: u64 = 1024 * 1024;

/// Where one inode's content is.
enum Content {
    Memory(Vec<u8>),
    /// In `dir/<ino>`; the descriptor is kept only while the file is open.
    Disk(Option<Arc<File>>),
}

/// The staged content of every inode written here.
pub struct Staging {
    dir: PathBuf,
    /// Bytes of memory all in-memory contents may hold together.
    budget: u64,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    contents: HashMap<u64, Content>,
    /// Capacity of every in-memory content, in bytes.
    memory: u64,
}

impl Inner {
    /// Room for `extra` more bytes of memory within `budget`.
    fn fits(&self, extra: u64, budget: u64) -> bool {
        self.memory.saturating_add(extra) <= budget
    }

    /// Resizes an in-memory content to `len` (zero-filled), keeping `memory` exact.
    fn resize(&mut self, ino: u64, len: usize) {
        if let Some(Content::Memory(bytes)) = self.contents.get_mut(&ino) {
            let before = bytes.capacity() as u64;
            if len > bytes.capacity() {
                bytes.reserve_exact(len - bytes.len());
            }
            bytes.resize(len, 0);
            if len < bytes.len() / 2 {
                bytes.shrink_to_fit();
            }
            let after = bytes.capacity() as u64;
            self.memory = self.memory.saturating_sub(before) + after;
        }
    }

    fn forget(&mut self, ino: u64) -> Option<Content> {
        let content = self.contents.remove(&ino);
        if let Some(Content::Memory(bytes)) = &content {
            self.memory = self.memory.saturating_sub(bytes.capacity() as u64);
        }
        content
    }
}

impl Staging {
    /// Creates (or reuses) the staging directory.
    pub fn open(dir: PathBuf, budget: u64) -> std::io::Result<Staging> {
        std::fs::create_dir_all(&dir)?;
        Ok(Staging {
            dir,
            budget,
            inner: Mutex::new(Inner::default()),
        })
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn path(&self, ino: u64) -> PathBuf {
        self.dir.join(ino.to_string())
    }

    /// Bytes of memory held by in-memory contents.
    #[cfg(test)]
    pub fn memory_bytes(&self) -> u64 {
        self.inner().memory
    }

    /// Starts the content of `ino` afresh: empty, or `size` bytes read from `source` (the
    /// cached content of a file about to be changed).
    pub fn start(&self, ino: u64, source: Option<(&mut File, u64)>) -> std::io::Result<()> {
        let size = source.as_ref().map(|(_, size)| *size).unwrap_or(0);
        let mut inner = self.inner();
        if let Some(Content::Disk(_)) = inner.forget(ino) {
            drop(inner);
            let _ = std::fs::remove_file(self.path(ino));
            inner = self.inner();
        }
        if size <= MEMORY_FILE_BYTES && inner.fits(size, self.budget) {
            let mut bytes = Vec::with_capacity(size as usize);
            if let Some((source, _)) = source {
                source.take(size).read_to_end(&mut bytes)?;
            }
            inner.memory += bytes.capacity() as u64;
            inner.contents.insert(ino, Content::Memory(bytes));
            return Ok(());
        }
        drop(inner);
        let file = open_rw(&self.path(ino), true)?;
        file.set_len(0)?;
        if let Some((source, _)) = source {
            std::io::copy(source, &mut &file)?;
        }
        self.inner()
            .contents
            .insert(ino, Content::Disk(Some(Arc::new(file))));
        Ok(())
    }

    /// The open staging file of `ino` when its content is on disk, opened if needed.
    fn disk_file(&self, inner: &mut Inner, ino: u64) -> std::io::Result<Option<Arc<File>>> {
        match inner.contents.get_mut(&ino) {
            Some(Content::Memory(_)) => Ok(None),
            Some(Content::Disk(Some(file))) => Ok(Some(file.clone())),
            Some(Content::Disk(slot)) => {
                let file = Arc::new(open_rw(&self.path(ino), false)?);
                *slot = Some(file.clone());
                Ok(Some(file))
            }
            None => Err(std::io::Error::from_raw_os_error(libc::ENOENT)),
        }
    }

    /// Moves an in-memory content to its file on disk.
    fn spill(&self, inner: &mut Inner, ino: u64) -> std::io::Result<Arc<File>> {
        let file = open_rw(&self.path(ino), true)?;
        file.set_len(0)?;
        if let Some(Content::Memory(bytes)) = inner.contents.get(&ino) {
            file.write_all_at(bytes, 0)?;
        }
        let file = Arc::new(file);
        inner.forget(ino);
        inner
            .contents
            .insert(ino, Content::Disk(Some(file.clone())));
        Ok(file)
    }

    /// Makes room for a change that leaves the content `new_len(current length)` bytes long:
    /// done here by `in_memory` on the resized bytes (None), or the file to make it on (the
    /// content moved to disk when memory cannot hold it).
    fn room_for(
        &self,
        ino: u64,
        new_len: impl FnOnce(u64) -> u64,
        in_memory: impl FnOnce(&mut Vec<u8>),
    ) -> std::io::Result<Option<Arc<File>>> {
        let mut inner = self.inner();
        if let Some(Content::Memory(bytes)) = inner.contents.get(&ino) {
            let len = new_len(bytes.len() as u64);
            let growth = len.saturating_sub(bytes.capacity() as u64);
            if len <= MEMORY_FILE_BYTES && inner.fits(growth, self.budget) {
                inner.resize(ino, len as usize);
                if let Some(Content::Memory(bytes)) = inner.contents.get_mut(&ino) {
                    in_memory(bytes);
                }
                return Ok(None);
            }
            return self.spill(&mut inner, ino).map(Some);
        }
        self.disk_file(&mut inner, ino)?
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EIO))
            .map(Some)
    }

    /// Writes `data` at `offset` (the caller has checked `offset + len` against its limit).
    pub fn write_at(&self, ino: u64, data: &[u8], offset: u64) -> std::io::Result<()> {
        let end = offset + data.len() as u64;
        let copy = |bytes: &mut Vec<u8>| {
            bytes[offset as usize..end as usize].copy_from_slice(data);
        };
        match self.room_for(ino, |len| len.max(end), copy)? {
            None => Ok(()),
            Some(file) => file.write_all_at(data, offset),
        }
    }

    /// Sets the length (sparse on disk; zero-filled in memory within its small bound).
    pub fn set_len(&self, ino: u64, len: u64) -> std::io::Result<()> {
        match self.room_for(ino, |_| len, |_| {})? {
            None => Ok(()),
            Some(file) => file.set_len(len),
        }
    }

    /// Reads into `buffer` from `offset`; returns how many bytes were read.
    pub fn read_at(&self, ino: u64, buffer: &mut [u8], offset: u64) -> std::io::Result<usize> {
        let mut inner = self.inner();
        let file = match inner.contents.get(&ino) {
            Some(Content::Memory(bytes)) => {
                let start = (offset.min(bytes.len() as u64)) as usize;
                let n = buffer.len().min(bytes.len() - start);
                buffer[..n].copy_from_slice(&bytes[start..start + n]);
                return Ok(n);
            }
            _ => self
                .disk_file(&mut inner, ino)?
                .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EIO))?,
        };
        drop(inner);
        read_fully_at(&file, buffer, offset)
    }

    /// The whole content, for sending inline (the caller knows it is small).
    pub fn read_all(&self, ino: u64, size: u64) -> std::io::Result<Vec<u8>> {
        if let Some(Content::Memory(bytes)) = self.inner().contents.get(&ino) {
            return Ok(bytes.clone());
        }
        let mut data = vec![0; size as usize];
        let read = self.read_at(ino, &mut data, 0)?;
        data.truncate(read);
        Ok(data)
    }

    /// The content as a file on disk (moved there if in memory), for uploading in chunks.
    pub fn file_path(&self, ino: u64) -> std::io::Result<PathBuf> {
        let mut inner = self.inner();
        if let Some(Content::Memory(_)) = inner.contents.get(&ino) {
            self.spill(&mut inner, ino)?;
        }
        Ok(self.path(ino))
    }

    /// Closes the descriptor of a file no handle has open (a copy of 100k files must not
    /// keep 100k descriptors); in-memory content stays.
    pub fn close(&self, ino: u64) {
        if let Some(Content::Disk(slot)) = self.inner().contents.get_mut(&ino) {
            *slot = None;
        }
    }

    /// Forgets the content of `ino`.
    pub fn remove(&self, ino: u64) {
        let content = self.inner().forget(ino);
        if let Some(Content::Disk(_)) = content {
            let _ = std::fs::remove_file(self.path(ino));
        }
    }

    /// Removes the staging directory (the mount is ending).
    pub fn remove_all(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Reads into `buffer` from `offset` until it is full or the file ends; returns the count.
pub fn read_fully_at(file: &File, buffer: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buffer.len() {
        match file.read_at(&mut buffer[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn staging(budget: u64) -> (tempfile::TempDir, Staging) {
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging::open(dir.path().join("s"), budget).unwrap();
        (dir, staging)
    }

    fn content(staging: &Staging, ino: u64) -> Vec<u8> {
        let mut buffer = vec![0; 4 * MEMORY_FILE_BYTES as usize];
        let n = staging.read_at(ino, &mut buffer, 0).unwrap();
        buffer.truncate(n);
        buffer
    }

    #[test]
    fn small_files_stay_in_memory_and_read_back() {
        let (dir, staging) = staging(1 << 20);
        staging.start(1, None).unwrap();
        staging.write_at(1, b"hello", 0).unwrap();
        staging.write_at(1, b"world", 10).unwrap();
        assert_eq!(content(&staging, 1), b"hello\0\0\0\0\0world");
        staging.set_len(1, 3).unwrap();
        assert_eq!(content(&staging, 1), b"hel");
        assert!(staging.memory_bytes() >= 3);
        assert!(
            !dir.path().join("s/1").exists(),
            "no file for a small content"
        );
        staging.remove(1);
        assert_eq!(staging.memory_bytes(), 0);
    }

    #[test]
    fn a_large_file_or_a_spent_budget_goes_to_disk() {
        let (dir, staging) = staging(64);
        staging.start(1, None).unwrap();
        staging.write_at(1, &[7; 60], 0).unwrap();
        staging.start(2, None).unwrap();
        staging.write_at(2, &[8; 10], 0).unwrap();
        assert!(dir.path().join("s/2").exists(), "past the budget: on disk");
        assert_eq!(content(&staging, 2), vec![8; 10]);
        assert!(staging.memory_bytes() <= 64);
        // A sparse length far past memory's bound allocates nothing.
        staging.set_len(1, 1 << 40).unwrap();
        let mut tail = [1u8; 4];
        assert_eq!(staging.read_at(1, &mut tail, (1 << 40) - 4).unwrap(), 4);
        assert_eq!(tail, [0; 4]);
        assert_eq!(staging.memory_bytes(), 0);
        staging.remove(1);
        assert!(!dir.path().join("s/1").exists());
    }

    #[test]
    fn file_path_moves_memory_to_disk_whole() {
        let (_dir, staging) = staging(1 << 20);
        staging.start(5, None).unwrap();
        staging.write_at(5, b"abc", 0).unwrap();
        let path = staging.file_path(5).unwrap();
        assert_eq!(std::fs::read(path).unwrap(), b"abc");
        staging.write_at(5, b"d", 3).unwrap();
        assert_eq!(staging.read_all(5, 4).unwrap(), b"abcd");
        assert_eq!(staging.memory_bytes(), 0);
    }
}
