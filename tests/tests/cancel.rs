//! A CancelRequest relayed by Veneer is answered as the server answers it: the client's connection
//! closes only once the server has taken the request (clients such as asyncpg send their next query
//! as soon as it closes, and a signal landing after that would cancel the wrong query). A test
//! binary of its own: it pauses the server's postmaster.

use std::time::Duration;

use tokio::io::AsyncReadExt;
use veneer_tests::raw::{self, RawClient};
use veneer_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_is_told_a_cancel_is_done_only_once_the_server_took_it() {
    let proxy = ProxyHandle::start().await;
    let (mut sleeper, greeting) = RawClient::startup(proxy.addr(), SUPERUSER, "cancel-order").await;
    let key = greeting
        .iter()
        .find(|m| m.tag() == b'K')
        .expect("BackendKeyData")
        .body()
        .to_vec();
    let observer = direct_admin().await;
    sleeper.send(&raw::query("SELECT pg_sleep(30)")).await;
    wait_backend_active(&observer, "cancel-order", "pg_sleep").await;

    let paused = pg().pause();
    let mut cancel = RawClient::connect(proxy.addr()).await;
    let mut request = Vec::new();
    request.extend_from_slice(&16u32.to_be_bytes());
    request.extend_from_slice(&80_877_102u32.to_be_bytes());
    request.extend_from_slice(&key);
    cancel.send(&request).await;
    let (mut stream, _) = cancel.into_parts();
    let mut byte = [0u8; 1];
    // While the server cannot take it, the cancel is not done: the connection stays open.
    let early = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut byte)).await;
    assert!(
        early.is_err(),
        "the cancel connection closed before the server took the request: {early:?}"
    );
    drop(paused);
    let closed = within("the cancel connection to close", stream.read(&mut byte)).await;
    assert!(matches!(closed, Ok(0)), "{closed:?}");
    let answer = within("the cancelled query", sleeper.read_until_ready()).await;
    assert_eq!(raw::first_error(&answer).code(), "57014");
}
