//! The request's id: a sane `X-Request-Id` the client sent, else a new
//! UUIDv7.

use super::context::RequestCtx;
use super::view::RequestView;

/// Set the request's id: a sane client-supplied `X-Request-Id`, else a new
/// UUIDv7. (The Pingora path also builds the header value once, from it.)
pub fn assign_request_id(req: &impl RequestView, ctx: &mut RequestCtx) {
    match client_request_id(req) {
        Some(id) => {
            ctx.request_id_from_client = true;
            ctx.request_id.push_str(id);
        }
        None => new_request_id_into(ctx),
    }
}

/// Set a new UUIDv7 as the request's id (the request has no `X-Request-Id`).
pub fn new_request_id_into(ctx: &mut RequestCtx) {
    let now = std::time::SystemTime::now();
    ctx.started_wall = Some(now);
    let mut text = uuid::Uuid::encode_buffer();
    ctx.request_id
        .push_str(new_request_id_at(now).hyphenated().encode_lower(&mut text));
}

/// A new UUIDv7 (RFC 9562 §5.7): Unix milliseconds, then 74 random bits.
///
/// `Uuid::now_v7` takes a process-wide lock to count within a millisecond;
/// ids made here are unique by their random bits and sort by millisecond,
/// which is what a request id needs, without the lock.
pub fn new_request_id() -> uuid::Uuid {
    new_request_id_at(std::time::SystemTime::now())
}

/// A new UUIDv7 stamped with `now`.
fn new_request_id_at(now: std::time::SystemTime) -> uuid::Uuid {
    let millis = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let random: [u8; 10] = rand::random();
    uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid()
}

/// A sane client-supplied `X-Request-Id` (printable ASCII, 1–200 bytes).
fn client_request_id(req: &impl RequestView) -> Option<&str> {
    let b = req.header("x-request-id")?;
    if !b.is_empty() && b.len() <= 200 && b.iter().all(|c| (0x21..0x7f).contains(c)) {
        std::str::from_utf8(b).ok()
    } else {
        None
    }
}

/// Keep a sane client-supplied `X-Request-Id`, else make a UUIDv7.
pub fn request_id(req: &impl RequestView) -> String {
    match client_request_id(req) {
        Some(id) => id.to_string(),
        None => new_request_id().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_uuid_v7_stamped_now_and_distinct() {
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        let ids: Vec<uuid::Uuid> = (0..1000).map(|_| new_request_id()).collect();
        let after = before + 60_000;
        let mut seen = std::collections::HashSet::new();
        for id in &ids {
            assert_eq!(id.get_version_num(), 7);
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
            let (secs, nanos) = id.get_timestamp().map(|t| t.to_unix()).unwrap_or_default();
            let millis = secs * 1000 + u64::from(nanos) / 1_000_000;
            assert!(
                (before..after).contains(&millis),
                "{millis} not in {before}..{after}"
            );
            assert!(seen.insert(*id), "{id} repeated");
        }
    }
}
