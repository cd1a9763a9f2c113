use tokio::io::AsyncWriteExt;

use super::*;
use crate::proxy::body::InFlight;

/// What hyper writes when it refuses a head; a response body can hold the
/// same bytes.
const BARE_400: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";

fn connection() -> (MatrixRefusals<Vec<u8>>, Arc<ConnActivity>) {
    let activity = Arc::new(ConnActivity::new());
    (MatrixRefusals::new(Vec::new(), activity.clone()), activity)
}

fn request(activity: &Arc<ConnActivity>) -> InFlight {
    let gauge = prometheus::IntGauge::new("in_flight", "test").unwrap();
    InFlight::start(activity.clone(), gauge)
}

fn rewritten(io: &MatrixRefusals<Vec<u8>>) -> bool {
    let out = String::from_utf8_lossy(&io.inner);
    out.contains("M_UNRECOGNIZED")
}

#[tokio::test]
async fn a_refused_first_head_gets_a_matrix_error() {
    let (mut io, _) = connection();
    io.write_all(BARE_400).await.unwrap();
    io.flush().await.unwrap();
    assert!(rewritten(&io));
    assert!(io
        .inner
        .starts_with(b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json"));
}

#[tokio::test]
async fn response_bytes_are_left_alone_until_the_response_is_flushed() {
    let (mut io, activity) = connection();
    let served = request(&activity);
    // The response's head and body, while the request is in flight.
    io.write_all(BARE_400).await.unwrap();
    io.write_all(BARE_400).await.unwrap();
    drop(served);
    // Its last bytes, written after its body ended.
    io.write_all(BARE_400).await.unwrap();
    assert!(!rewritten(&io));
    assert_eq!(io.inner, BARE_400.repeat(3));

    // All out: the next head can only be hyper's refusal.
    io.flush().await.unwrap();
    io.write_all(BARE_400).await.unwrap();
    assert!(rewritten(&io));
}

#[tokio::test]
async fn a_request_started_since_the_last_flush_holds_off_the_rewrite() {
    let (mut io, activity) = connection();
    io.flush().await.unwrap();
    // A response with an empty body ends before hyper writes any of it.
    drop(request(&activity));
    io.write_all(BARE_400).await.unwrap();
    assert!(!rewritten(&io));
}
