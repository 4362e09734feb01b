//! Wake-ups for WatchJob: the transition scripts publish on the Redis channel named like the
//! job's record key (`dispatch:{p7}:job:<id>`) while the partition's `watchers` counter is
//! above zero (each Watch counts itself there while it lives, so a job nobody watches costs no
//! publish at all). One subscriber connection per dispatch process subscribes to the channels
//! of the jobs being watched here, only while they are watched. A watcher then reads the job's
//! history from its cursor, so a missed wake-up (a counter lost with a crashed Redis, say) only
//! delays it until its next periodic read; a count left behind by a dispatch that crashed only
//! brings back the publishes to nobody.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use fred::prelude::*;
use tokio::sync::broadcast;

use crate::store::Layout;

type Channels = Arc<Mutex<HashMap<String, (broadcast::Sender<()>, usize)>>>;

/// In-process fan-out of per-job wake-ups. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    client: Arc<fred::clients::SubscriberClient>,
    /// For the partitions' `watchers` counters.
    counters: Client,
    layout: Layout,
    channels: Channels,
}

/// Wake-ups of one watched job; unsubscribes when the last watcher of the job drops it.
pub struct Watch {
    pub rx: broadcast::Receiver<()>,
    channel: String,
    /// The partition's `watchers` counter, once this watch counted itself there.
    counted: Option<String>,
    hub: Hub,
}

/// Takes a watch off its partition's counter, deleting the counter at zero.
const UNCOUNT: &str = "local n = redis.call('DECR', KEYS[1]) if n <= 0 then redis.call('DEL', KEYS[1]) end return n";

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(key) = self.counted.take() {
            let counters = self.hub.counters.clone();
            tokio::spawn(async move {
                let _: Result<i64, _> = counters.eval(UNCOUNT, vec![key], Vec::<String>::new()).await;
            });
        }
        let mut map = self.hub.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, n)) = map.get_mut(&self.channel) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.channel);
                let (client, channel) = (self.hub.client.clone(), self.channel.clone());
                tokio::spawn(async move {
                    let _ = client.unsubscribe(channel).await;
                });
            }
        }
    }
}

impl Hub {
    /// Connects the subscriber (it resubscribes the watched channels after a reconnect).
    pub async fn start(
        redis_url: &str,
        link: &crate::config::Redis,
        layout: Layout,
        counters: Client,
    ) -> Result<Hub, fred::error::Error> {
        let config = crate::store::redis_config(redis_url, link)?;
        let client = Builder::from_config(config)
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
            .build_subscriber_client()?;
        client.init().await?;
        client.manage_subscriptions();
        let channels: Channels = Arc::default();
        let mut rx = client.message_rx();
        let fan = channels.clone();
        tokio::spawn(async move {
            while let Ok(msg) = rx.recv().await {
                let map = fan.lock().unwrap_or_else(|e| e.into_inner());
                if let Some((tx, _)) = map.get(&*msg.channel) {
                    let _ = tx.send(());
                }
            }
        });
        Ok(Hub {
            client: Arc::new(client),
            counters,
            layout,
            channels,
        })
    }

    /// Wake-ups of job `id`, subscribed before this returns for the job's first watcher here.
    /// (A wake-up lost to a race between a last watcher leaving and a new one arriving is
    /// covered by the watcher's periodic re-read.)
    pub async fn watch(&self, id: &str) -> Result<Watch, fred::error::Error> {
        let partition = self.layout.partition_of(id);
        let channel = partition.job(id);
        let (rx, first) = {
            let mut map = self.channels.lock().unwrap_or_else(|e| e.into_inner());
            let entry = map
                .entry(channel.clone())
                .or_insert_with(|| (broadcast::channel(16).0, 0));
            entry.1 += 1;
            (entry.0.subscribe(), entry.1 == 1)
        };
        let mut watch = Watch {
            rx,
            channel: channel.clone(),
            counted: None,
            hub: self.clone(),
        };
        // On an error the Watch is dropped, which undoes what was done.
        let counter = partition.watchers();
        let _: i64 = self.counters.incr(counter.as_str()).await?;
        watch.counted = Some(counter);
        if first {
            self.client.subscribe(channel).await?;
        }
        Ok(watch)
    }
}
