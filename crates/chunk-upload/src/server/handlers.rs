//! Request handling: routing, validation and the body-streaming append loop.

use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header as h};
use http_body_util::BodyExt as _;
use tracing::{debug, trace, warn};

use super::locks::{Busy, WriteGuard};
use super::{Inner, Operation};
use crate::id::UploadId;
use crate::protocol::{
    self, Checksum, ChecksumAlgorithm, ChecksumHasher, Concat, HeaderError, Metadata,
    OFFSET_OCTET_STREAM, TUS_VERSION, header,
};
use crate::store::{ConcatRole, Store, StoreError, UploadInfo, UploadWriter};

const EXTENSIONS: &str = "creation,creation-with-upload,creation-defer-length,termination,\
expiration,checksum,checksum-trailer,concatenation";
const CHECKSUM_ALGORITHMS: &str = "sha1,sha256,crc32";
const ALLOW_METHODS: &str = "POST, HEAD, PATCH, DELETE, OPTIONS";
const ALLOW_HEADERS: &str = "Authorization, Content-Type, Origin, X-Requested-With, \
X-HTTP-Method-Override, Tus-Resumable, Upload-Offset, Upload-Length, Upload-Defer-Length, \
Upload-Metadata, Upload-Checksum, Upload-Concat";
const EXPOSE_HEADERS: &str = "Location, Tus-Resumable, Tus-Version, Tus-Extension, Tus-Max-Size, \
Tus-Checksum-Algorithm, Upload-Offset, Upload-Length, Upload-Defer-Length, Upload-Metadata, \
Upload-Concat, Upload-Expires";

pub(super) fn router<S: Store>(inner: Arc<Inner<S>>) -> axum::Router {
    axum::Router::new()
        .fallback(dispatch::<S>)
        .with_state(inner)
}

pub(super) fn is_expired(info: &UploadInfo, now: SystemTime) -> bool {
    !info.is_complete() && info.expires_at.is_some_and(|at| at <= now)
}

/// An answer other than success: status plus a message for the client.
#[derive(Debug)]
struct Failure {
    status: StatusCode,
    message: String,
    offset: Option<u64>,
}

impl Failure {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            offset: None,
        }
    }

    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn header(error: HeaderError) -> Self {
        Self::bad(error.to_string())
    }

    fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "no such upload")
    }

    fn store(error: StoreError) -> Self {
        match error {
            StoreError::NotFound(_) => Self::not_found(),
            StoreError::Gone(_) => Self::new(StatusCode::GONE, "the upload is gone"),
            StoreError::TooLarge { .. } => {
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, error.to_string())
            }
            other => {
                warn!(error = %other, source = ?std::error::Error::source(&other), "store failure");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "storage failure")
            }
        }
    }

    fn with_offset(mut self, offset: u64) -> Self {
        self.offset = Some(offset);
        self
    }
}

type Answer = Result<Response, Failure>;

enum Target {
    Collection,
    Upload(UploadId),
}

async fn dispatch<S: Store>(State(inner): State<Arc<Inner<S>>>, request: Request) -> Response {
    let origin = request.headers().get(h::ORIGIN).cloned();
    let (parts, body) = request.into_parts();
    let answer = serve(&inner, parts, body).await;

    let mut response = answer.unwrap_or_else(|failure| {
        debug!(status = %failure.status, message = %failure.message, "request refused");
        let mut response = Response::new(Body::from(failure.message));
        *response.status_mut() = failure.status;
        let headers = response.headers_mut();
        headers.insert(
            h::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if let Some(offset) = failure.offset {
            headers.insert(header::UPLOAD_OFFSET, offset.into());
        }
        response
    });

    let headers = response.headers_mut();
    headers.insert(header::TUS_RESUMABLE, HeaderValue::from_static(TUS_VERSION));
    if inner.config.cors {
        if let Some(origin) = origin {
            headers.insert(h::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            headers.insert(
                h::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(EXPOSE_HEADERS),
            );
            headers.insert(h::VARY, HeaderValue::from_static("Origin"));
        }
    }
    response
}

async fn serve<S: Store>(inner: &Arc<Inner<S>>, parts: http::request::Parts, body: Body) -> Answer {
    let target = route(&inner.config.base_path, parts.uri.path())?;
    let method = effective_method(&parts)?;
    trace!(%method, path = parts.uri.path(), "tus request");

    if method == Method::OPTIONS {
        authorize(inner, &parts, Operation::Discover).await?;
        return Ok(options(inner, &parts.headers));
    }
    check_version(&parts.headers)?;

    match (target, method) {
        (Target::Collection, Method::POST) => {
            authorize(inner, &parts, Operation::Create).await?;
            create(inner, &parts.headers, body).await
        }
        (Target::Upload(id), Method::HEAD) => {
            authorize(inner, &parts, Operation::Status(id.clone())).await?;
            head(inner, &id).await
        }
        (Target::Upload(id), Method::PATCH) => {
            authorize(inner, &parts, Operation::Append(id.clone())).await?;
            patch(inner, &id, &parts.headers, body).await
        }
        (Target::Upload(id), Method::DELETE) => {
            authorize(inner, &parts, Operation::Terminate(id.clone())).await?;
            terminate(inner, &id).await
        }
        (Target::Collection, _) => Err(not_allowed("POST, OPTIONS")),
        // Not yet: GET to download a finished upload (applications read the store).
        (Target::Upload(_), _) => Err(not_allowed("HEAD, PATCH, DELETE, OPTIONS")),
    }
}

fn not_allowed(allow: &'static str) -> Failure {
    Failure::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed here; use {allow}"),
    )
}

/// Maps the raw (still percent-encoded) path to a target. Only `{base}` and `{base}/{id}`
/// with a valid id exist; everything else, encoded traversal included, is a 404.
fn route(base: &str, path: &str) -> Result<Target, Failure> {
    let rest = path.strip_prefix(base).ok_or_else(Failure::not_found)?;
    if rest.is_empty() || rest == "/" {
        return Ok(Target::Collection);
    }
    let segment = rest.strip_prefix('/').ok_or_else(Failure::not_found)?;
    let segment = segment.strip_suffix('/').unwrap_or(segment);
    UploadId::parse(segment)
        .map(Target::Upload)
        .map_err(|_| Failure::not_found())
}

fn effective_method(parts: &http::request::Parts) -> Result<Method, Failure> {
    let Some(value) = parts.headers.get(header::X_HTTP_METHOD_OVERRIDE) else {
        return Ok(parts.method.clone());
    };
    if parts.method != Method::POST {
        return Err(Failure::bad(
            "x-http-method-override is only honoured on POST",
        ));
    }
    match value.as_bytes() {
        b"PATCH" => Ok(Method::PATCH),
        b"DELETE" => Ok(Method::DELETE),
        b"HEAD" => Ok(Method::HEAD),
        _ => Err(Failure::bad(
            "x-http-method-override must be PATCH, DELETE or HEAD",
        )),
    }
}

fn check_version(headers: &HeaderMap) -> Result<(), Failure> {
    match headers.get(header::TUS_RESUMABLE) {
        Some(v) if v == TUS_VERSION => Ok(()),
        found => {
            let message = match found {
                Some(_) => "unsupported tus-resumable version; this server speaks 1.0.0",
                None => "missing tus-resumable header; this server speaks 1.0.0",
            };
            Err(Failure::new(StatusCode::PRECONDITION_FAILED, message))
        }
    }
}

async fn authorize<S: Store>(
    inner: &Inner<S>,
    parts: &http::request::Parts,
    operation: Operation,
) -> Result<(), Failure> {
    let Some(hook) = &inner.authorize else {
        return Ok(());
    };
    hook(parts, &operation)
        .await
        .map_err(|r| Failure::new(r.status, r.message))
}

fn text<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<Option<&'a str>, Failure> {
    match headers.get(name) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .map(Some)
            .map_err(|_| Failure::header(HeaderError::NotAscii { header: name })),
    }
}

fn options<S: Store>(inner: &Inner<S>, request: &HeaderMap) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    headers.insert(header::TUS_VERSION, HeaderValue::from_static(TUS_VERSION));
    headers.insert(header::TUS_EXTENSION, HeaderValue::from_static(EXTENSIONS));
    headers.insert(
        header::TUS_CHECKSUM_ALGORITHM,
        HeaderValue::from_static(CHECKSUM_ALGORITHMS),
    );
    if let Some(max) = inner.config.max_size {
        headers.insert(header::TUS_MAX_SIZE, max.into());
    }
    if inner.config.cors && request.contains_key(h::ORIGIN) {
        headers.insert(
            h::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(ALLOW_METHODS),
        );
        headers.insert(
            h::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOW_HEADERS),
        );
        headers.insert(h::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
    }
    response
}

fn upload_url<S: Store>(inner: &Inner<S>, id: &UploadId) -> String {
    format!("{}/{id}", inner.config.base_path)
}

fn expires_header(info: &UploadInfo) -> Option<HeaderValue> {
    let at = info.expires_at.filter(|_| !info.is_complete())?;
    HeaderValue::from_str(&protocol::format_expires(at)).ok()
}

fn completed<S: Store>(inner: &Inner<S>, info: &UploadInfo) {
    debug!(upload = %info.id, length = ?info.length, "upload complete");
    if let Some(hook) = &inner.on_complete {
        hook(info);
    }
}

async fn create<S: Store>(inner: &Arc<Inner<S>>, headers: &HeaderMap, body: Body) -> Answer {
    let concat = text(headers, header::UPLOAD_CONCAT)?
        .map(Concat::parse)
        .transpose()
        .map_err(Failure::header)?;
    let metadata = text(headers, header::UPLOAD_METADATA)?
        .map(Metadata::parse)
        .transpose()
        .map_err(Failure::header)?
        .unwrap_or_default();
    if let Some(Concat::Final(urls)) = concat {
        return create_final(inner, &urls, metadata).await;
    }

    let length = text(headers, header::UPLOAD_LENGTH)?
        .map(protocol::parse_length)
        .transpose()
        .map_err(Failure::header)?;
    let deferred = text(headers, header::UPLOAD_DEFER_LENGTH)?
        .map(protocol::parse_defer_length)
        .transpose()
        .map_err(Failure::header)?
        .is_some();
    match (length, deferred) {
        (Some(_), true) => {
            return Err(Failure::bad(
                "send either upload-length or upload-defer-length, not both",
            ));
        }
        (None, false) => {
            return Err(Failure::bad(
                "upload-length or upload-defer-length: 1 is required",
            ));
        }
        _ => {}
    }
    check_max_size(inner, length)?;

    let now = inner.clock.now();
    let id = UploadId::random();
    let mut info = UploadInfo::new(id.clone(), length, now);
    info.metadata = metadata;
    info.concat = concat.map(|_| ConcatRole::Partial);
    info.expires_at = inner.config.expiration.and_then(|ttl| now.checked_add(ttl));
    inner
        .store
        .create(info.clone())
        .await
        .map_err(Failure::store)?;
    if info.is_complete() {
        completed(inner, &info);
    }

    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::CREATED;
    let location = HeaderValue::from_str(&upload_url(inner, &id))
        .map_err(|_| Failure::bad("invalid base path"))?;
    response.headers_mut().insert(h::LOCATION, location);
    if let Some(expires) = expires_header(&info) {
        response
            .headers_mut()
            .insert(header::UPLOAD_EXPIRES, expires);
    }

    // creation-with-upload: the body, if any, is the first PATCH.
    let has_body = headers.get(h::CONTENT_LENGTH).is_some_and(|v| v != "0")
        || headers.contains_key(h::TRANSFER_ENCODING);
    if has_body {
        if !is_offset_stream(headers) {
            return Err(Failure::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("a creation body must be {OFFSET_OCTET_STREAM}"),
            ));
        }
        let guard = inner
            .locks
            .acquire(
                &id,
                false,
                inner.config.takeover_after,
                inner.config.lock_wait,
            )
            .await
            .map_err(|Busy| Failure::new(StatusCode::LOCKED, "the upload is being written"))?;
        let request = AppendRequest::from_headers(headers, 0)?;
        let offset = append(inner, &guard, info, request, body).await?;
        response
            .headers_mut()
            .insert(header::UPLOAD_OFFSET, offset.into());
    }
    debug!(upload = %id, "created");
    Ok(response)
}

fn check_max_size<S: Store>(inner: &Inner<S>, length: Option<u64>) -> Result<(), Failure> {
    match (length, inner.config.max_size) {
        (Some(length), Some(max)) if length > max => Err(Failure::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("upload-length {length} exceeds the maximum size {max}"),
        )),
        _ => Ok(()),
    }
}

async fn create_final<S: Store>(
    inner: &Arc<Inner<S>>,
    urls: &[String],
    metadata: Metadata,
) -> Answer {
    let mut parts = Vec::with_capacity(urls.len());
    let mut length: u64 = 0;
    for url in urls {
        let id = part_id(&inner.config.base_path, url).ok_or_else(|| {
            Failure::bad("upload-concat names a URL that is not an upload of this server")
        })?;
        let info = match inner.store.info(&id).await {
            Ok(info) => info,
            Err(StoreError::NotFound(_) | StoreError::Gone(_)) => {
                return Err(Failure::bad(format!("partial upload {id} does not exist")));
            }
            Err(other) => return Err(Failure::store(other)),
        };
        if info.concat != Some(ConcatRole::Partial) {
            return Err(Failure::bad(format!("upload {id} is not a partial upload")));
        }
        // Not yet: the concatenation-unfinished extension (final before parts complete).
        if !info.is_complete() {
            return Err(Failure::bad(format!("partial upload {id} is not complete")));
        }
        length = length.saturating_add(info.offset);
        parts.push(id);
    }
    check_max_size(inner, Some(length))?;

    let now = inner.clock.now();
    let id = UploadId::random();
    let mut info = UploadInfo::new(id.clone(), Some(length), now);
    info.metadata = metadata;
    info.concat = Some(ConcatRole::Final(parts.clone()));
    inner
        .store
        .create(info.clone())
        .await
        .map_err(Failure::store)?;
    if let Err(error) = inner.store.concatenate(&id, &parts).await {
        let _ = inner.store.delete(&id).await;
        return Err(Failure::store(error));
    }
    info.offset = length;
    inner.store.finish(&id).await.map_err(Failure::store)?;
    completed(inner, &info);

    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::CREATED;
    let location = HeaderValue::from_str(&upload_url(inner, &id))
        .map_err(|_| Failure::bad("invalid base path"))?;
    response.headers_mut().insert(h::LOCATION, location);
    Ok(response)
}

/// Accepts `/base/id`, `http(s)://host/base/id`; nothing that needs decoding.
fn part_id(base: &str, url: &str) -> Option<UploadId> {
    let path = match url.split_once("://") {
        Some((scheme, rest)) if scheme == "http" || scheme == "https" => &rest[rest.find('/')?..],
        Some(_) => return None,
        None => url,
    };
    match route(base, path).ok()? {
        Target::Upload(id) => Some(id),
        Target::Collection => None,
    }
}

async fn head<S: Store>(inner: &Arc<Inner<S>>, id: &UploadId) -> Answer {
    inner
        .locks
        .quiesce(id, inner.config.lock_wait)
        .await
        .map_err(|Busy| Failure::new(StatusCode::LOCKED, "the upload's writer does not stop"))?;
    let info = live_info(inner, id).await?;

    let mut response = Response::new(Body::empty());
    let headers = response.headers_mut();
    headers.insert(h::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::UPLOAD_OFFSET, info.offset.into());
    match info.length {
        Some(length) => headers.insert(header::UPLOAD_LENGTH, length.into()),
        None => headers.insert(header::UPLOAD_DEFER_LENGTH, HeaderValue::from_static("1")),
    };
    if !info.metadata.is_empty() {
        if let Ok(value) = HeaderValue::from_str(&info.metadata.to_string()) {
            headers.insert(header::UPLOAD_METADATA, value);
        }
    }
    match &info.concat {
        Some(ConcatRole::Partial) => {
            headers.insert(header::UPLOAD_CONCAT, HeaderValue::from_static("partial"));
        }
        Some(ConcatRole::Final(parts)) => {
            let urls: Vec<String> = parts.iter().map(|p| upload_url(inner, p)).collect();
            let value = Concat::Final(urls).to_string();
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(header::UPLOAD_CONCAT, value);
            }
        }
        None => {}
    }
    if let Some(expires) = expires_header(&info) {
        headers.insert(header::UPLOAD_EXPIRES, expires);
    }
    Ok(response)
}

/// Reads an upload's state, treating an expired one as gone (and removing it).
async fn live_info<S: Store>(inner: &Inner<S>, id: &UploadId) -> Result<UploadInfo, Failure> {
    let info = inner.store.info(id).await.map_err(Failure::store)?;
    if is_expired(&info, inner.clock.now()) {
        debug!(upload = %id, "expired upload removed on access");
        inner.store.delete(id).await.map_err(Failure::store)?;
        return Err(Failure::new(StatusCode::GONE, "the upload has expired"));
    }
    Ok(info)
}

async fn terminate<S: Store>(inner: &Arc<Inner<S>>, id: &UploadId) -> Answer {
    let guard = inner
        .locks
        .acquire(
            id,
            true,
            inner.config.takeover_after,
            inner.config.lock_wait,
        )
        .await
        .map_err(|Busy| Failure::new(StatusCode::LOCKED, "the upload's writer does not stop"))?;
    inner.store.info(id).await.map_err(Failure::store)?;
    inner.store.delete(id).await.map_err(Failure::store)?;
    drop(guard);
    debug!(upload = %id, "terminated");

    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    Ok(response)
}

fn is_offset_stream(headers: &HeaderMap) -> bool {
    headers
        .get(h::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(OFFSET_OCTET_STREAM))
}

/// What a PATCH (or a creation body) asks for, validated before any byte is read.
struct AppendRequest {
    offset: u64,
    declared_length: Option<u64>,
    content_length: Option<u64>,
    checksum: Option<Checksum>,
    trailer_checksum: bool,
}

impl AppendRequest {
    fn from_headers(headers: &HeaderMap, offset: u64) -> Result<Self, Failure> {
        let declared_length = text(headers, header::UPLOAD_LENGTH)?
            .map(protocol::parse_length)
            .transpose()
            .map_err(Failure::header)?;
        let content_length = match text(headers, h::CONTENT_LENGTH.as_str())? {
            None => None,
            Some(v) => Some(
                v.parse::<u64>()
                    .map_err(|_| Failure::bad("invalid content-length"))?,
            ),
        };
        let checksum = text(headers, header::UPLOAD_CHECKSUM)?
            .map(Checksum::parse)
            .transpose()
            .map_err(Failure::header)?;
        let trailer_checksum = headers
            .get_all(h::TRAILER)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(protocol::parse_list)
            .any(|name| name.eq_ignore_ascii_case(header::UPLOAD_CHECKSUM));
        if checksum.is_some() && trailer_checksum {
            return Err(Failure::bad(
                "upload-checksum is given both as header and as trailer",
            ));
        }
        Ok(Self {
            offset,
            declared_length,
            content_length,
            checksum,
            trailer_checksum,
        })
    }
}

async fn patch<S: Store>(
    inner: &Arc<Inner<S>>,
    id: &UploadId,
    headers: &HeaderMap,
    body: Body,
) -> Answer {
    if !is_offset_stream(headers) {
        return Err(Failure::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("content-type must be {OFFSET_OCTET_STREAM}"),
        ));
    }
    let offset = text(headers, header::UPLOAD_OFFSET)?
        .ok_or_else(|| Failure::bad("upload-offset is required"))
        .and_then(|v| protocol::parse_offset(v).map_err(Failure::header))?;
    let request = AppendRequest::from_headers(headers, offset)?;

    let guard = inner
        .locks
        .acquire(
            id,
            false,
            inner.config.takeover_after,
            inner.config.lock_wait,
        )
        .await
        .map_err(|Busy| {
            Failure::new(
                StatusCode::LOCKED,
                "another request is writing to this upload",
            )
        })?;
    let info = live_info(inner, id).await?;
    if matches!(info.concat, Some(ConcatRole::Final(_))) {
        return Err(Failure::new(
            StatusCode::FORBIDDEN,
            "a final concatenated upload cannot be patched",
        ));
    }
    if info.offset != offset {
        return Err(Failure::new(
            StatusCode::CONFLICT,
            format!(
                "upload-offset {offset} does not match the stored offset {}",
                info.offset
            ),
        )
        .with_offset(info.offset));
    }

    let new_offset = append(inner, &guard, info, request, body).await?;
    let info = inner.store.info(id).await.map_err(Failure::store)?;

    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
        .headers_mut()
        .insert(header::UPLOAD_OFFSET, new_offset.into());
    if let Some(expires) = expires_header(&info) {
        response
            .headers_mut()
            .insert(header::UPLOAD_EXPIRES, expires);
    }
    Ok(response)
}

/// How the body loop ended.
#[derive(Debug, PartialEq, Eq)]
enum Ending {
    Complete,
    Interrupted,
    Idle,
    Disconnected,
    TooLarge,
}

/// Streams `body` into the store; returns the committed offset.
async fn append<S: Store>(
    inner: &Arc<Inner<S>>,
    guard: &WriteGuard,
    mut info: UploadInfo,
    request: AppendRequest,
    mut body: Body,
) -> Result<u64, Failure> {
    let id = info.id.clone();
    let start = request.offset;

    if let Some(declared) = request.declared_length {
        declare_length(inner, &mut info, declared).await?;
    }
    let limit = match (info.length, inner.config.max_size) {
        (Some(length), _) => length - start.min(length),
        (None, Some(max)) => max.saturating_sub(start),
        (None, None) => u64::MAX,
    };
    if request.content_length.is_some_and(|len| len > limit) {
        return Err(Failure::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body would exceed the upload's length ({limit} bytes remain)"),
        )
        .with_offset(start));
    }

    let mut writer = inner.store.writer(&id).await.map_err(Failure::store)?;
    let mut hasher: Option<ChecksumHasher> =
        request.checksum.as_ref().map(|c| c.algorithm.hasher());
    let mut trailer_hashers: Option<Vec<(ChecksumAlgorithm, ChecksumHasher)>> =
        request.trailer_checksum.then(|| {
            ChecksumAlgorithm::ALL
                .iter()
                .map(|a| (*a, a.hasher()))
                .collect()
        });
    let mut trailer_value: Option<Checksum> = None;
    let mut received: u64 = 0;
    let idle = inner.config.idle_timeout;

    let ending = loop {
        let frame = tokio::select! {
            biased;
            () = guard.interrupted().cancelled() => break Ending::Interrupted,
            frame = tokio::time::timeout(idle, body.frame()) => frame,
        };
        let frame = match frame {
            Err(_) => break Ending::Idle,
            Ok(None) => break Ending::Complete,
            Ok(Some(Err(error))) => {
                debug!(upload = %id, %error, received, "request body ended early");
                break Ending::Disconnected;
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let frame = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let Some(trailers) = frame.trailers_ref() {
                    trailer_value = trailer_checksum(trailers)?;
                }
                continue;
            }
        };
        if received.saturating_add(data_len(&frame)) > limit {
            break Ending::TooLarge;
        }
        if let Some(hasher) = hasher.as_mut() {
            hasher.update(&frame);
        }
        if let Some(hashers) = trailer_hashers.as_mut() {
            hashers.iter_mut().for_each(|(_, h)| h.update(&frame));
        }
        if let Err(error) = writer.write(&frame).await {
            warn!(upload = %id, %error, "write failed; keeping what is stored");
            let offset = writer.commit().await.map_err(Failure::store)?;
            return Err(Failure::store(error).with_offset(offset));
        }
        received += data_len(&frame);
        guard.progress();
    };
    trace!(upload = %id, ?ending, received, "body loop ended");

    // Decide whether the bytes stay.
    let verify = request
        .checksum
        .clone()
        .map(|expected| (expected, hasher.take()));
    let verdict: Result<(), Failure> = match (&ending, verify, request.trailer_checksum) {
        (Ending::TooLarge, _, _) => Err(Failure::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body exceeds the upload's length ({limit} bytes remained)"),
        )),
        (Ending::Complete, Some((expected, Some(hasher))), _) => check_digest(&expected, hasher),
        (Ending::Complete, None, true) => match trailer_value {
            None => Err(Failure::bad(
                "the upload-checksum trailer was announced but not sent",
            )),
            Some(expected) => {
                let hasher = trailer_hashers
                    .and_then(|hs| hs.into_iter().find(|(a, _)| *a == expected.algorithm))
                    .map(|(_, h)| h);
                match hasher {
                    Some(hasher) => check_digest(&expected, hasher),
                    None => Err(Failure::bad("unsupported checksum algorithm in trailer")),
                }
            }
        },
        (_, Some(_), _) | (_, None, true) => Err(Failure::new(
            ending_status(&ending),
            "the request ended before its checksum could be verified; its bytes were discarded",
        )),
        _ => Ok(()),
    };
    if let Err(failure) = verdict {
        let offset = writer.abort().await.map_err(Failure::store)?;
        return Err(failure.with_offset(offset));
    }

    let offset = writer.commit().await.map_err(Failure::store)?;
    debug!(upload = %id, start, offset, ?ending, "bytes committed");
    if info.length == Some(offset) && start != offset {
        inner.store.finish(&id).await.map_err(Failure::store)?;
        info.offset = offset;
        completed(inner, &info);
    }

    match ending {
        Ending::Complete => Ok(offset),
        Ending::Interrupted => Err(Failure::new(
            StatusCode::CONFLICT,
            "this request was stopped by a newer request for the same upload",
        )
        .with_offset(offset)),
        Ending::Idle => Err(Failure::new(
            StatusCode::REQUEST_TIMEOUT,
            "no bytes arrived for too long",
        )
        .with_offset(offset)),
        _ => Err(Failure::bad("the request body ended early").with_offset(offset)),
    }
}

/// Status for a body that did not arrive whole: the same whether or not bytes were kept,
/// so a client's recovery (HEAD, then resume) does not depend on checksums.
fn ending_status(ending: &Ending) -> StatusCode {
    match ending {
        Ending::Interrupted => StatusCode::CONFLICT,
        Ending::Idle => StatusCode::REQUEST_TIMEOUT,
        _ => StatusCode::BAD_REQUEST,
    }
}

fn data_len(data: &bytes::Bytes) -> u64 {
    data.len() as u64
}

fn check_digest(expected: &Checksum, hasher: ChecksumHasher) -> Result<(), Failure> {
    if hasher.finish() == expected.digest {
        Ok(())
    } else {
        let status = StatusCode::from_u16(protocol::STATUS_CHECKSUM_MISMATCH)
            .unwrap_or(StatusCode::BAD_REQUEST);
        Err(Failure::new(
            status,
            "checksum mismatch; the request's bytes were discarded",
        ))
    }
}

fn trailer_checksum(trailers: &HeaderMap) -> Result<Option<Checksum>, Failure> {
    let name = HeaderName::from_static(header::UPLOAD_CHECKSUM);
    match trailers.get(&name) {
        None => Ok(None),
        Some(v) => {
            let v = v.to_str().map_err(|_| {
                Failure::header(HeaderError::NotAscii {
                    header: header::UPLOAD_CHECKSUM,
                })
            })?;
            Checksum::parse(v).map(Some).map_err(Failure::header)
        }
    }
}

async fn declare_length<S: Store>(
    inner: &Inner<S>,
    info: &mut UploadInfo,
    declared: u64,
) -> Result<(), Failure> {
    match info.length {
        Some(length) if length == declared => Ok(()),
        Some(_) => Err(Failure::bad("upload-length cannot change once set")),
        None => {
            if declared < info.offset {
                return Err(Failure::bad(
                    "upload-length is smaller than the bytes already stored",
                ));
            }
            check_max_size(inner, Some(declared))?;
            inner
                .store
                .declare_length(&info.id, declared)
                .await
                .map_err(Failure::store)?;
            info.length = Some(declared);
            if info.offset == declared {
                inner.store.finish(&info.id).await.map_err(Failure::store)?;
                completed(inner, info);
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_accept_only_the_base_and_valid_ids() {
        let id = UploadId::random();
        assert!(matches!(route("/files", "/files"), Ok(Target::Collection)));
        assert!(matches!(route("/files", "/files/"), Ok(Target::Collection)));
        assert!(matches!(
            route("/files", &format!("/files/{id}")),
            Ok(Target::Upload(_))
        ));
        for bad in [
            "/filesx",
            "/other",
            "/files/..%2Fvictim",
            "/files/a/b",
            "/files/%2e%2e",
        ] {
            assert!(route("/files", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn part_urls_resolve_only_to_our_uploads() {
        let id = UploadId::random();
        assert_eq!(part_id("/files", &format!("/files/{id}")), Some(id.clone()));
        assert_eq!(
            part_id("/files", &format!("http://h:1/files/{id}")),
            Some(id)
        );
        for bad in ["../victim", "../../etc/passwd", "ftp://h/files/x", "/files"] {
            assert_eq!(part_id("/files", bad), None, "{bad}");
        }
    }
}
