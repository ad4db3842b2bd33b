//! Where the client remembers upload URLs, so that a rerun resumes instead of restarting.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

/// What is remembered about one upload in progress.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredUpload {
    /// URL of the (final or only) upload; `None` while parallel parts are still sent.
    pub url: Option<String>,
    /// URLs of the partial uploads when the file is sent in parallel parts.
    #[serde(default)]
    pub parts: Vec<String>,
}

/// A map from file fingerprint to upload URL(s).
pub trait UrlStore: Send + Sync + 'static {
    /// The entry for `fingerprint`.
    ///
    /// # Errors
    ///
    /// I/O errors of the backing storage.
    fn get(
        &self,
        fingerprint: &str,
    ) -> impl Future<Output = std::io::Result<Option<StoredUpload>>> + Send;

    /// Records the entry for `fingerprint`.
    ///
    /// # Errors
    ///
    /// I/O errors of the backing storage.
    fn put(
        &self,
        fingerprint: &str,
        upload: StoredUpload,
    ) -> impl Future<Output = std::io::Result<()>> + Send;

    /// Forgets `fingerprint` (after success, or when its upload is gone).
    ///
    /// # Errors
    ///
    /// I/O errors of the backing storage.
    fn remove(&self, fingerprint: &str) -> impl Future<Output = std::io::Result<()>> + Send;
}

/// Keeps entries in memory only; resumes within one process.
#[derive(Debug, Clone, Default)]
pub struct MemoryUrlStore {
    entries: Arc<Mutex<BTreeMap<String, StoredUpload>>>,
}

impl UrlStore for MemoryUrlStore {
    async fn get(&self, fingerprint: &str) -> std::io::Result<Option<StoredUpload>> {
        Ok(self
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(fingerprint)
            .cloned())
    }

    async fn put(&self, fingerprint: &str, upload: StoredUpload) -> std::io::Result<()> {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(fingerprint.to_owned(), upload);
        Ok(())
    }

    async fn remove(&self, fingerprint: &str) -> std::io::Result<()> {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(fingerprint);
        Ok(())
    }
}

/// Keeps entries in one small JSON file, rewritten atomically (temporary file + rename),
/// so it survives a crash of the uploading process.
#[derive(Debug, Clone)]
pub struct FileUrlStore {
    path: PathBuf,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl FileUrlStore {
    /// A store in the file at `path` (created on first write).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            lock: Arc::default(),
        }
    }

    async fn load(&self) -> std::io::Result<BTreeMap<String, StoredUpload>> {
        match tokio::fs::read(&self.path).await {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(e),
        }
    }

    async fn save(&self, entries: &BTreeMap<String, StoredUpload>) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(entries).map_err(std::io::Error::other)?;
        let tmp = self.path.with_extension("tmp");
        tokio::fs::write(&tmp, json).await?;
        tokio::fs::rename(&tmp, &self.path).await
    }
}

impl UrlStore for FileUrlStore {
    async fn get(&self, fingerprint: &str) -> std::io::Result<Option<StoredUpload>> {
        let _guard = self.lock.lock().await;
        Ok(self.load().await?.remove(fingerprint))
    }

    async fn put(&self, fingerprint: &str, upload: StoredUpload) -> std::io::Result<()> {
        let _guard = self.lock.lock().await;
        let mut entries = self.load().await?;
        entries.insert(fingerprint.to_owned(), upload);
        self.save(&entries).await
    }

    async fn remove(&self, fingerprint: &str) -> std::io::Result<()> {
        let _guard = self.lock.lock().await;
        let mut entries = self.load().await?;
        if entries.remove(fingerprint).is_some() {
            self.save(&entries).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn file_store_survives_a_new_instance() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("urls.json");
        let entry = StoredUpload {
            url: Some("http://h/files/1".into()),
            parts: vec![],
        };
        FileUrlStore::new(&path)
            .put("fp", entry.clone())
            .await
            .unwrap();
        let again = FileUrlStore::new(&path);
        assert_eq!(again.get("fp").await.unwrap(), Some(entry));
        again.remove("fp").await.unwrap();
        assert_eq!(again.get("fp").await.unwrap(), None);
    }
}
