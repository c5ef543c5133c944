//! The watchers against a fake Destination service on a real socket: the first answers are
//! NotFound (manifests not loaded yet), then endpoints arrive as adds.

use super::*;
use linkerd2_proxy_api::{
    destination::{
        destination_server::{Destination, DestinationServer},
        DestinationProfile, WeightedAddr, WeightedAddrSet,
    },
    net::{IpAddress, TcpAddress},
};
use std::{pin::Pin, sync::Mutex};
use tonic::codegen::tokio_stream::{wrappers::UnboundedReceiverStream, Stream};

type Updates = mpsc::UnboundedSender<Result<Update, Status>>;

/// Answers `known:8080` after `not_found_first` NotFounds, and hands the test each stream's
/// sender so it decides what the watcher receives.
struct Fake {
    not_found_first: AtomicU64,
    streams: Mutex<mpsc::UnboundedSender<Updates>>,
}

#[tonic::async_trait]
impl Destination for Fake {
    type GetStream = Pin<Box<dyn Stream<Item = Result<Update, Status>> + Send>>;
    type GetProfileStream = Pin<Box<dyn Stream<Item = Result<DestinationProfile, Status>> + Send>>;

    async fn get(&self, req: tonic::Request<GetDestination>) -> Result<tonic::Response<Self::GetStream>, Status> {
        if req.get_ref().path != "known:8080" {
            return Err(Status::not_found("no such Service"));
        }
        if self.not_found_first.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok() {
            return Err(Status::not_found("not loaded yet"));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = self.streams.lock().unwrap().send(tx);
        Ok(tonic::Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }

    async fn get_profile(&self, _: tonic::Request<GetDestination>) -> Result<tonic::Response<Self::GetProfileStream>, Status> {
        Err(Status::unimplemented("no profiles"))
    }
}

fn add(ip: [u8; 4]) -> Update {
    let addr = TcpAddress { ip: Some(IpAddress { ip: Some(Ip::Ipv4(u32::from_be_bytes(ip))) }), port: 8080 };
    let set = WeightedAddrSet { addrs: vec![WeightedAddr { addr: Some(addr), weight: 10_000, ..Default::default() }], metric_labels: Default::default() };
    Update { update: Some(update::Update::Add(set)) }
}

async fn fake(not_found_first: u64) -> (SocketAddr, mpsc::UnboundedReceiver<Updates>) {
    let incoming = tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = incoming.local_addr().unwrap();
    let (streams_tx, streams) = mpsc::unbounded_channel();
    let fake = Fake { not_found_first: AtomicU64::new(not_found_first), streams: Mutex::new(streams_tx) };
    tokio::spawn(tonic::transport::Server::builder().serve_with_incoming(DestinationServer::new(fake), incoming));
    (addr, streams)
}

async fn next(events: &mut mpsc::UnboundedReceiver<Event>) -> Event {
    tokio::time::timeout(Duration::from_secs(5), events.recv()).await.expect("an event within 5s").expect("the channel is open")
}

#[tokio::test]
async fn a_watcher_retries_until_found_then_reports_every_added_address() {
    let (addr, mut streams) = fake(2).await;
    let channel = channels(addr, 1).await.unwrap().remove(0);
    let (tx, mut events) = mpsc::unbounded_channel();
    let counters = Arc::new(Counters::default());
    spawn_destination(channel, "known:8080".into(), Instant::now() + Duration::from_secs(5), tx, counters.clone());

    let updates = tokio::time::timeout(Duration::from_secs(5), streams.recv()).await.unwrap().unwrap();
    updates.send(Ok(add([10, 1, 0, 1]))).unwrap();
    assert!(matches!(next(&mut events).await, Event::Added(ip, _) if ip == Ipv4Addr::new(10, 1, 0, 1)));
    assert!(matches!(next(&mut events).await, Event::Ready(Kind::Destination, Ok(()))));

    let sent = std::time::Instant::now();
    updates.send(Ok(add([10, 100, 0, 7]))).unwrap();
    match next(&mut events).await {
        Event::Added(ip, at) => assert!(ip == Ipv4Addr::new(10, 100, 0, 7) && at >= sent, "{ip} at {at:?}"),
        other => panic!("expected the new address, found {other:?}"),
    }
    drop(updates);
    assert!(matches!(next(&mut events).await, Event::Ended(reason) if reason.contains("ended the stream")));
    assert_eq!(counters.updates.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn a_watcher_gives_up_at_its_deadline_and_says_why() {
    let (addr, _streams) = fake(0).await;
    let channel = channels(addr, 1).await.unwrap().remove(0);
    let (tx, mut events) = mpsc::unbounded_channel();
    spawn_destination(channel, "unknown:8080".into(), Instant::now() + Duration::from_millis(300), tx, Arc::default());
    match next(&mut events).await {
        Event::Ready(Kind::Destination, Err(e)) => assert!(e.contains("unknown:8080: NotFound") && e.contains("declare this Service"), "{e}"),
        other => panic!("expected a failure, found {other:?}"),
    }
}
