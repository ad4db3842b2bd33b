//! Failure cases UP-06 and UP-11: the server over stores with awkward storage rules,
//! built here on the public `Store` trait.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use common::{client, data, head_offset, patch, sha256, start_store};
use steadfast_chunk_upload::UploadId;
use steadfast_chunk_upload::server::ServerConfig;
use steadfast_chunk_upload::store::{PartLimits, Store, StoreError, UploadInfo, UploadWriter};
use tokio::fs;
use tokio::io::AsyncWriteExt as _;

const BLOCK: u64 = 5 << 20;

/// A store that can only commit whole 5 MiB blocks and parks anything smaller in a side
/// file (`.rest`). It records the acknowledged offset so that lost bytes show as `Gone`.
#[derive(Clone)]
struct BlockStore {
    root: PathBuf,
}

impl BlockStore {
    fn path(&self, id: &UploadId, suffix: &str) -> PathBuf {
        self.root.join(format!("{id}.{suffix}"))
    }

    async fn blocks(&self, id: &UploadId) -> u64 {
        let mut n = 0;
        while fs::metadata(self.path(id, &format!("block{n}")))
            .await
            .is_ok()
        {
            n += 1;
        }
        n
    }
}

fn io(op: &'static str, id: &UploadId) -> impl FnOnce(std::io::Error) -> StoreError {
    let id = id.clone();
    move |e| StoreError::io(op, &id, e)
}

impl Store for BlockStore {
    type Writer = BlockWriter;

    async fn create(&self, info: UploadInfo) -> Result<(), StoreError> {
        let id = &info.id;
        fs::write(self.path(id, "info"), serde_json::to_vec(&info).unwrap())
            .await
            .map_err(io("info", id))?;
        fs::write(self.path(id, "rest"), b"")
            .await
            .map_err(io("rest", id))?;
        fs::write(self.path(id, "acked"), b"0")
            .await
            .map_err(io("acked", id))
    }

    async fn info(&self, id: &UploadId) -> Result<UploadInfo, StoreError> {
        let Ok(bytes) = fs::read(self.path(id, "info")).await else {
            return Err(StoreError::NotFound(id.clone()));
        };
        let mut info: UploadInfo = serde_json::from_slice(&bytes).unwrap();
        let rest = match fs::metadata(self.path(id, "rest")).await {
            Ok(meta) => meta.len(),
            Err(_) => return Err(StoreError::Gone(id.clone())),
        };
        let acked: u64 = fs::read_to_string(self.path(id, "acked"))
            .await
            .unwrap()
            .parse()
            .unwrap();
        info.offset = self.blocks(id).await * BLOCK + rest;
        if info.offset < acked {
            return Err(StoreError::Gone(id.clone()));
        }
        Ok(info)
    }

    async fn writer(&self, id: &UploadId) -> Result<BlockWriter, StoreError> {
        let blocks = self.blocks(id).await;
        let rest = fs::OpenOptions::new()
            .append(true)
            .open(self.path(id, "rest"))
            .await
            .map_err(io("open", id))?;
        let rest_len = rest.metadata().await.map_err(io("stat", id))?.len();
        Ok(BlockWriter {
            store: self.clone(),
            id: id.clone(),
            blocks,
            rest,
            rest_len,
        })
    }

    async fn declare_length(&self, id: &UploadId, length: u64) -> Result<(), StoreError> {
        let mut info = self.info(id).await?;
        info.length = Some(length);
        fs::write(self.path(id, "info"), serde_json::to_vec(&info).unwrap())
            .await
            .map_err(io("info", id))
    }

    async fn concatenate(&self, target: &UploadId, _parts: &[UploadId]) -> Result<(), StoreError> {
        Err(StoreError::Corrupt {
            id: target.clone(),
            reason: "this test store cannot concatenate".into(),
        })
    }

    async fn delete(&self, id: &UploadId) -> Result<(), StoreError> {
        for suffix in ["info", "rest", "acked"] {
            let _ = fs::remove_file(self.path(id, suffix)).await;
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<UploadId>, StoreError> {
        Ok(Vec::new())
    }
}

struct BlockWriter {
    store: BlockStore,
    id: UploadId,
    blocks: u64,
    rest: fs::File,
    rest_len: u64,
}

impl UploadWriter for BlockWriter {
    async fn write(&mut self, mut data: &[u8]) -> Result<(), StoreError> {
        while !data.is_empty() {
            let take = (BLOCK - self.rest_len).min(data.len() as u64) as usize;
            self.rest
                .write_all(&data[..take])
                .await
                .map_err(io("write", &self.id))?;
            self.rest_len += take as u64;
            data = &data[take..];
            if self.rest_len == BLOCK {
                // A full block: commit it and start a new side file.
                self.rest.sync_all().await.map_err(io("sync", &self.id))?;
                let block = self.store.path(&self.id, &format!("block{}", self.blocks));
                fs::rename(self.store.path(&self.id, "rest"), block)
                    .await
                    .map_err(io("rename", &self.id))?;
                self.rest = fs::File::create(self.store.path(&self.id, "rest"))
                    .await
                    .map_err(io("rest", &self.id))?;
                self.blocks += 1;
                self.rest_len = 0;
            }
        }
        Ok(())
    }

    async fn commit(mut self) -> Result<u64, StoreError> {
        // The remainder is durable before the offset is acknowledged.
        self.rest.flush().await.map_err(io("flush", &self.id))?;
        self.rest.sync_all().await.map_err(io("sync", &self.id))?;
        let offset = self.blocks * BLOCK + self.rest_len;
        fs::write(self.store.path(&self.id, "acked"), offset.to_string())
            .await
            .map_err(io("acked", &self.id))?;
        Ok(offset)
    }

    async fn abort(self) -> Result<u64, StoreError> {
        Err(StoreError::Corrupt {
            id: self.id,
            reason: "this test store does not take checksums".into(),
        })
    }
}

#[tokio::test]
async fn up_06_an_acknowledged_offset_survives_a_restart() {
    for delete_remainder in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("blocks");
        std::fs::create_dir_all(&root).unwrap();
        let store = BlockStore { root: root.clone() };
        let first = start_store(
            tempfile::tempdir().unwrap(),
            store,
            ServerConfig::default(),
            |b| b,
        )
        .await;

        let source = data(6 << 20, 6);
        let location = common::create(&first, 10 << 20).await;
        let response = patch(&first, &location, 0, source.clone()).await;
        assert_eq!(response.status(), 204);
        assert_eq!(
            response.headers()["upload-offset"],
            (6u64 << 20).to_string().as_str()
        );
        assert_eq!(head_offset(&first, &location).await, (200, Some(6 << 20)));
        drop(first);

        let id: UploadId = location.rsplit('/').next().unwrap().parse().unwrap();
        if delete_remainder {
            std::fs::remove_file(root.join(format!("{id}.rest"))).unwrap();
        }
        let second = start_store(
            tempfile::tempdir().unwrap(),
            BlockStore { root },
            ServerConfig::default(),
            |b| b,
        )
        .await;
        let expected = if delete_remainder {
            (410, None)
        } else {
            (200, Some(6 << 20))
        };
        assert_eq!(head_offset(&second, &location).await, expected);
    }
}

/// A completed multipart upload: the id and its (part number, tag) list.
type Completion = (UploadId, Vec<(u32, String)>);

/// A mock of a part-based object store: parts of at least 5 MiB except the last, at most
/// 10,000, completed with the ordered list of part numbers and tags. Pending bytes below
/// a part are held in memory, as a real one would hold them in a temporary object.
#[derive(Clone, Default)]
struct PartStore {
    state: Arc<Mutex<HashMap<UploadId, PartState>>>,
    completed: Arc<Mutex<Vec<Completion>>>,
}

#[derive(Clone)]
struct PartState {
    info: UploadInfo,
    part_size: u64,
    parts: Vec<(u32, String, u64)>,
    pending: Vec<u8>,
    data: Vec<u8>,
}

impl PartState {
    fn offset(&self) -> u64 {
        self.parts.iter().map(|p| p.2).sum::<u64>() + self.pending.len() as u64
    }

    fn upload_part(&mut self, bytes: Vec<u8>) {
        let number = self.parts.len() as u32 + 1;
        let tag = format!("{:x?}", &sha256(&bytes)[..4]);
        assert!(
            number <= PartLimits::S3.max_parts,
            "part number {number} is over the limit"
        );
        self.parts.push((number, tag, bytes.len() as u64));
        self.data.extend_from_slice(&bytes);
    }
}

impl Store for PartStore {
    type Writer = PartWriter;

    async fn create(&self, info: UploadInfo) -> Result<(), StoreError> {
        let planned = info.length.unwrap_or(100 << 30);
        let part_size = PartLimits::S3
            .part_size(planned)
            .ok_or_else(|| StoreError::TooLarge {
                length: planned,
                reason: "more than 10,000 parts of 5 GiB".into(),
            })?;
        let state = PartState {
            info: info.clone(),
            part_size,
            parts: Vec::new(),
            pending: Vec::new(),
            data: Vec::new(),
        };
        self.state.lock().unwrap().insert(info.id, state);
        Ok(())
    }

    async fn info(&self, id: &UploadId) -> Result<UploadInfo, StoreError> {
        let state = self.state.lock().unwrap();
        let s = state
            .get(id)
            .ok_or_else(|| StoreError::NotFound(id.clone()))?;
        let mut info = s.info.clone();
        info.offset = s.offset();
        Ok(info)
    }

    async fn writer(&self, id: &UploadId) -> Result<PartWriter, StoreError> {
        self.info(id).await?;
        Ok(PartWriter {
            store: self.clone(),
            id: id.clone(),
        })
    }

    async fn declare_length(&self, id: &UploadId, length: u64) -> Result<(), StoreError> {
        let mut state = self.state.lock().unwrap();
        let s = state
            .get_mut(id)
            .ok_or_else(|| StoreError::NotFound(id.clone()))?;
        s.info.length = Some(length);
        Ok(())
    }

    async fn finish(&self, id: &UploadId) -> Result<(), StoreError> {
        let mut state = self.state.lock().unwrap();
        let s = state
            .get_mut(id)
            .ok_or_else(|| StoreError::NotFound(id.clone()))?;
        if !s.pending.is_empty() {
            let last = std::mem::take(&mut s.pending);
            s.upload_part(last);
        }
        // The object store checks the list: ascending, no gaps, every part but the last
        // at least the minimum.
        for (index, part) in s.parts.iter().enumerate() {
            assert_eq!(part.0 as usize, index + 1);
            if index + 1 < s.parts.len() {
                assert!(part.2 >= PartLimits::S3.min_part);
            }
        }
        let list = s
            .parts
            .iter()
            .map(|(n, tag, _)| (*n, tag.clone()))
            .collect();
        self.completed.lock().unwrap().push((id.clone(), list));
        Ok(())
    }

    async fn concatenate(&self, target: &UploadId, _parts: &[UploadId]) -> Result<(), StoreError> {
        Err(StoreError::Corrupt {
            id: target.clone(),
            reason: "not supported by this mock".into(),
        })
    }

    async fn delete(&self, id: &UploadId) -> Result<(), StoreError> {
        self.state.lock().unwrap().remove(id);
        Ok(())
    }

    async fn list(&self) -> Result<Vec<UploadId>, StoreError> {
        Ok(self.state.lock().unwrap().keys().cloned().collect())
    }
}

struct PartWriter {
    store: PartStore,
    id: UploadId,
}

impl UploadWriter for PartWriter {
    async fn write(&mut self, data: &[u8]) -> Result<(), StoreError> {
        let mut state = self.store.state.lock().unwrap();
        let s = state
            .get_mut(&self.id)
            .ok_or_else(|| StoreError::Gone(self.id.clone()))?;
        s.pending.extend_from_slice(data);
        while s.pending.len() as u64 >= s.part_size {
            let rest = s.pending.split_off(s.part_size as usize);
            let part = std::mem::replace(&mut s.pending, rest);
            s.upload_part(part);
        }
        Ok(())
    }

    async fn commit(self) -> Result<u64, StoreError> {
        self.store.info(&self.id).await.map(|info| info.offset)
    }

    async fn abort(self) -> Result<u64, StoreError> {
        Err(StoreError::Corrupt {
            id: self.id,
            reason: "this mock does not take checksums".into(),
        })
    }
}

#[tokio::test]
async fn up_11_tiny_patches_never_break_part_limits() {
    let store = PartStore::default();
    let server = start_store(
        tempfile::tempdir().unwrap(),
        store.clone(),
        ServerConfig::default(),
        |b| b,
    )
    .await;
    let source = data(60 << 20, 11);
    let location = common::create(&server, source.len() as u64).await;
    let http = client();
    let url = server.url(&location);
    for (index, piece) in source.chunks(1024).enumerate() {
        let response = http
            .patch(&url)
            .header("Tus-Resumable", "1.0.0")
            .header("Upload-Offset", (index * 1024).to_string())
            .header("Content-Type", "application/offset+octet-stream")
            .body(piece.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 204, "PATCH {index}");
    }

    let completed = store.completed.lock().unwrap().clone();
    assert_eq!(completed.len(), 1);
    let numbers: Vec<u32> = completed[0].1.iter().map(|(n, _)| *n).collect();
    assert_eq!(numbers, (1..=12).collect::<Vec<_>>());
    let state = store.state.lock().unwrap();
    let s = state.values().next().unwrap();
    assert!(s.parts.iter().all(|p| p.2 == 5 << 20));
    assert_eq!(sha256(&s.data), sha256(&source));
}

#[tokio::test]
async fn up_11_a_huge_upload_plans_parts_within_the_limit_or_is_refused() {
    let store = PartStore::default();
    let config = ServerConfig {
        max_size: None,
        ..ServerConfig::default()
    };
    let server = start_store(tempfile::tempdir().unwrap(), store.clone(), config, |b| b).await;
    let location = common::create(&server, 60 << 30).await;
    let id: UploadId = location.rsplit('/').next().unwrap().parse().unwrap();
    let part_size = store.state.lock().unwrap()[&id].part_size;
    assert!(
        (60u64 << 30).div_ceil(part_size) <= 10_000,
        "part size {part_size}"
    );

    // 60 TiB cannot fit in 10,000 parts of 5 GiB: creation is refused.
    let response = client()
        .post(server.endpoint())
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", (60u64 << 40).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
}
