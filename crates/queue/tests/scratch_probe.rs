use std::time::{Duration, Instant};
use async_nats::jetstream::{self, consumer::{pull, PullConsumer, AckPolicy}, stream};
use futures::StreamExt;

async fn drain(label: &str, mut b: pull::Batch, t: Instant) {
    let mut n = 0;
    while let Some(m) = b.next().await {
        match m { Ok(m) => { n += 1; eprintln!("{label}: msg delivered={} at {:?}", m.info().unwrap().delivered, t.elapsed()); }
                  Err(e) => eprintln!("{label}: err {e} at {:?}", t.elapsed()) }
    }
    eprintln!("{label}: done n={n} at {:?}", t.elapsed());
}

#[tokio::test]
async fn probe() {
    let client = async_nats::connect("127.0.0.1:4222").await.unwrap();
    let js = jetstream::new(client);
    let name = format!("probe{}", std::process::id());
    let s = js.create_stream(stream::Config { name: name.clone(), subjects: vec![format!("{name}.x")], retention: stream::RetentionPolicy::WorkQueue, ..Default::default() }).await.unwrap();
    let c: PullConsumer = s.create_consumer(pull::Config { durable_name: Some("c".into()), ack_policy: AckPolicy::Explicit, ack_wait: Duration::from_secs(30), ..Default::default() }).await.unwrap();
    let t = Instant::now();
    drain("A fetch no_wait expires=3s empty", c.fetch().max_messages(10).expires(Duration::from_secs(3)).messages().await.unwrap(), t).await;
    let t = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(4), drain("B fetch no_wait no-expires empty", c.fetch().max_messages(10).messages().await.unwrap(), t)).await;
    eprintln!("B timeout? {}", r.is_err());
    js.publish(format!("{name}.x"), "1".into()).await.unwrap().await.unwrap();
    let t = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(4), drain("C fetch no_wait no-expires 1 avail", c.fetch().max_messages(10).messages().await.unwrap(), t)).await;
    eprintln!("C timeout? {}", r.is_err());
    js.publish(format!("{name}.x"), "2".into()).await.unwrap().await.unwrap();
    let t = Instant::now();
    drain("D fetch no_wait expires=3s 1 avail", c.fetch().max_messages(10).expires(Duration::from_secs(3)).messages().await.unwrap(), t).await;
    js.publish(format!("{name}.x"), "3".into()).await.unwrap().await.unwrap();
    let t = Instant::now();
    drain("E batch expires=2s 1 avail max 10", c.batch().max_messages(10).expires(Duration::from_secs(2)).messages().await.unwrap(), t).await;
    let t = Instant::now();
    drain("F batch expires=2s empty max 1", c.batch().max_messages(1).expires(Duration::from_secs(2)).messages().await.unwrap(), t).await;
    // G: no_wait with short expires, empty
    let t = Instant::now();
    drain("G fetch no_wait expires=100ms empty", c.fetch().max_messages(10).expires(Duration::from_millis(100)).messages().await.unwrap(), t).await;
    js.delete_stream(&name).await.unwrap();
}
