//! The default store: one directory, two files per upload.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use tokio::fs;
use tokio::io::{AsyncSeekExt as _, AsyncWriteExt as _};
use tracing::{debug, trace};

use super::{Store, StoreError, UploadInfo, UploadWriter};
use crate::id::UploadId;

/// Stores each upload as `<id>.bin` (the bytes) and `<id>.info` (JSON bookkeeping) in
/// one directory.
///
/// The offset of an upload is the length of its data file, so it can never claim bytes
/// that are not there, and it survives a restart of the server unchanged. Data is
/// `fsync`ed before a writer's commit returns; the info file is written once through a
/// temporary file and a rename, so it is never seen half-written.
#[derive(Debug, Clone)]
pub struct FileStore {
    root: PathBuf,
}

impl FileStore {
    /// A store in `root`, which is created if missing.
    ///
    /// # Errors
    ///
    /// The I/O error from creating the directory.
    pub async fn open(root: impl Into<PathBuf>) -> std::io::Result<Self> {
        let root = root.into();
        fs::create_dir_all(&root).await?;
        Ok(Self { root })
    }

    /// The directory this store writes into.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of the data file of `id`; the bytes of a finished upload are there.
    pub fn data_path(&self, id: &UploadId) -> PathBuf {
        // UploadId admits only 32 hex digits, so this cannot leave `root`.
        self.root.join(format!("{id}.bin"))
    }

    fn info_path(&self, id: &UploadId) -> PathBuf {
        self.root.join(format!("{id}.info"))
    }

    async fn write_info(&self, info: &UploadInfo) -> Result<(), StoreError> {
        let id = &info.id;
        // Serialising a plain struct of strings, numbers and byte vectors cannot fail.
        let json = serde_json::to_vec(info).unwrap_or_default();
        let tmp = self.root.join(format!("{id}.info.tmp"));
        let mut file = fs::File::create(&tmp)
            .await
            .map_err(|e| StoreError::io("create info", id, e))?;
        file.write_all(&json)
            .await
            .map_err(|e| StoreError::io("write info", id, e))?;
        file.sync_all()
            .await
            .map_err(|e| StoreError::io("sync info", id, e))?;
        fs::rename(&tmp, self.info_path(id))
            .await
            .map_err(|e| StoreError::io("rename info", id, e))
    }

    async fn read_info(&self, id: &UploadId) -> Result<UploadInfo, StoreError> {
        let bytes = match fs::read(self.info_path(id)).await {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(StoreError::NotFound(id.clone()));
            }
            Err(e) => return Err(StoreError::io("read info", id, e)),
        };
        let info: UploadInfo =
            serde_json::from_slice(&bytes).map_err(|reason| StoreError::Corrupt {
                id: id.clone(),
                reason: format!("info file does not parse: {reason}"),
            })?;
        if &info.id != id {
            return Err(StoreError::Corrupt {
                id: id.clone(),
                reason: "info names another id".into(),
            });
        }
        Ok(info)
    }

    async fn data_len(&self, id: &UploadId) -> Result<u64, StoreError> {
        match fs::metadata(self.data_path(id)).await {
            Ok(meta) => Ok(meta.len()),
            // The info file exists but the bytes are lost: never report a smaller offset.
            Err(e) if e.kind() == ErrorKind::NotFound => Err(StoreError::Gone(id.clone())),
            Err(e) => Err(StoreError::io("stat data", id, e)),
        }
    }
}

impl Store for FileStore {
    type Writer = FileWriter;

    async fn create(&self, info: UploadInfo) -> Result<(), StoreError> {
        let id = &info.id;
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(self.data_path(id))
            .await
            .map_err(|e| StoreError::io("create data", id, e))?;
        self.write_info(&info).await?;
        debug!(upload = %id, length = ?info.length, "upload created");
        Ok(())
    }

    async fn info(&self, id: &UploadId) -> Result<UploadInfo, StoreError> {
        let mut info = self.read_info(id).await?;
        info.offset = self.data_len(id).await?;
        if info.length.is_some_and(|length| info.offset > length) {
            return Err(StoreError::Corrupt {
                id: id.clone(),
                reason: "more bytes than its length".into(),
            });
        }
        Ok(info)
    }

    async fn writer(&self, id: &UploadId) -> Result<FileWriter, StoreError> {
        self.read_info(id).await?;
        let mut file = match fs::OpenOptions::new()
            .write(true)
            .open(self.data_path(id))
            .await
        {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(StoreError::Gone(id.clone())),
            Err(e) => return Err(StoreError::io("open data", id, e)),
        };
        let start = file
            .seek(std::io::SeekFrom::End(0))
            .await
            .map_err(|e| StoreError::io("seek data", id, e))?;
        trace!(upload = %id, start, "writer opened");
        Ok(FileWriter {
            id: id.clone(),
            file,
            start,
            written: 0,
        })
    }

    async fn declare_length(&self, id: &UploadId, length: u64) -> Result<(), StoreError> {
        let mut info = self.read_info(id).await?;
        info.length = Some(length);
        self.write_info(&info).await
    }

    async fn concatenate(&self, target: &UploadId, parts: &[UploadId]) -> Result<(), StoreError> {
        let mut out = self.writer(target).await?;
        for part in parts {
            let mut input = match fs::File::open(self.data_path(part)).await {
                Ok(file) => file,
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    return Err(StoreError::Gone(part.clone()));
                }
                Err(e) => return Err(StoreError::io("open part", part, e)),
            };
            let copied = tokio::io::copy(&mut input, &mut out.file)
                .await
                .map_err(|e| StoreError::io("copy part", target, e))?;
            out.written += copied;
        }
        out.commit().await.map(drop)
    }

    async fn delete(&self, id: &UploadId) -> Result<(), StoreError> {
        for path in [self.info_path(id), self.data_path(id)] {
            match fs::remove_file(&path).await {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io("remove file", id, e)),
            }
        }
        debug!(upload = %id, "upload removed");
        Ok(())
    }

    async fn list(&self) -> Result<Vec<UploadId>, StoreError> {
        let io = |source| StoreError::List { source };
        let mut entries = fs::read_dir(&self.root).await.map_err(io)?;
        let mut ids = Vec::new();
        while let Some(entry) = entries.next_entry().await.map_err(io)? {
            let name = entry.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".info")) else {
                continue;
            };
            if let Ok(id) = UploadId::parse(stem) {
                ids.push(id);
            }
        }
        Ok(ids)
    }
}

/// Appends to one upload's data file; see [`FileStore`].
#[derive(Debug)]
pub struct FileWriter {
    id: UploadId,
    file: fs::File,
    start: u64,
    written: u64,
}

impl UploadWriter for FileWriter {
    async fn write(&mut self, data: &[u8]) -> Result<(), StoreError> {
        self.file
            .write_all(data)
            .await
            .map_err(|e| StoreError::io("write data", &self.id, e))?;
        self.written += data.len() as u64;
        Ok(())
    }

    async fn commit(mut self) -> Result<u64, StoreError> {
        self.file
            .flush()
            .await
            .map_err(|e| StoreError::io("flush data", &self.id, e))?;
        self.file
            .sync_data()
            .await
            .map_err(|e| StoreError::io("sync data", &self.id, e))?;
        let offset = self.start.saturating_add(self.written);
        trace!(upload = %self.id, offset, "writer committed");
        Ok(offset)
    }

    async fn abort(mut self) -> Result<u64, StoreError> {
        // Flush first so that no queued write lands after the truncation.
        let _ = self.file.flush().await;
        self.file
            .set_len(self.start)
            .await
            .map_err(|e| StoreError::io("truncate data", &self.id, e))?;
        self.file
            .sync_data()
            .await
            .map_err(|e| StoreError::io("sync data", &self.id, e))?;
        trace!(upload = %self.id, offset = self.start, "writer aborted");
        Ok(self.start)
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    async fn store() -> (tempfile::TempDir, FileStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path().join("store")).await.unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn offset_is_the_stored_byte_count_and_survives_reopen() {
        let (dir, store) = store().await;
        let id = UploadId::random();
        store
            .create(UploadInfo::new(id.clone(), Some(10), SystemTime::now()))
            .await
            .unwrap();

        let mut writer = store.writer(&id).await.unwrap();
        writer.write(b"hello").await.unwrap();
        assert_eq!(writer.commit().await.unwrap(), 5);

        let reopened = FileStore::open(dir.path().join("store")).await.unwrap();
        let info = reopened.info(&id).await.unwrap();
        assert_eq!((info.offset, info.length), (5, Some(10)));
    }

    #[tokio::test]
    async fn abort_removes_only_this_writers_bytes() {
        let (_dir, store) = store().await;
        let id = UploadId::random();
        store
            .create(UploadInfo::new(id.clone(), None, SystemTime::now()))
            .await
            .unwrap();
        let mut first = store.writer(&id).await.unwrap();
        first.write(b"keep").await.unwrap();
        first.commit().await.unwrap();

        let mut second = store.writer(&id).await.unwrap();
        second.write(b"drop me").await.unwrap();
        assert_eq!(second.abort().await.unwrap(), 4);
        assert_eq!(std::fs::read(store.data_path(&id)).unwrap(), b"keep");
    }

    #[tokio::test]
    async fn lost_data_is_gone_not_a_smaller_offset() {
        let (_dir, store) = store().await;
        let id = UploadId::random();
        store
            .create(UploadInfo::new(id.clone(), Some(3), SystemTime::now()))
            .await
            .unwrap();
        std::fs::remove_file(store.data_path(&id)).unwrap();
        assert!(matches!(store.info(&id).await, Err(StoreError::Gone(_))));
        assert!(matches!(
            store.info(&UploadId::random()).await,
            Err(StoreError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn concatenate_joins_parts_in_order_and_list_finds_all() {
        let (_dir, store) = store().await;
        let mut parts = Vec::new();
        for text in [&b"ab"[..], b"", b"cde"] {
            let id = UploadId::random();
            store
                .create(UploadInfo::new(
                    id.clone(),
                    Some(text.len() as u64),
                    SystemTime::now(),
                ))
                .await
                .unwrap();
            let mut writer = store.writer(&id).await.unwrap();
            writer.write(text).await.unwrap();
            writer.commit().await.unwrap();
            parts.push(id);
        }
        let target = UploadId::random();
        store
            .create(UploadInfo::new(target.clone(), Some(5), SystemTime::now()))
            .await
            .unwrap();
        store.concatenate(&target, &parts).await.unwrap();
        assert_eq!(std::fs::read(store.data_path(&target)).unwrap(), b"abcde");
        assert_eq!(store.list().await.unwrap().len(), 4);

        store.delete(&target).await.unwrap();
        store.delete(&target).await.unwrap();
        assert_eq!(store.list().await.unwrap().len(), 3);
    }
}
