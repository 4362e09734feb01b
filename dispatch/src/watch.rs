//! Wake-ups for WatchJob: every transition script publishes on the Redis channel named like
//! its job's record key (`dispatch:{p7}:job:<id>`). One subscriber connection per dispatch process subscribes
//! to the channels of the jobs being watched here, only while they are watched, so a job nobody
//! watches costs one publish to nobody and nothing in dispatch. A watcher then reads the job's
//! history from its cursor, so a missed wake-up only delays it until its next periodic read.

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
    layout: Layout,
    channels: Channels,
}

/// Wake-ups of one watched job; unsubscribes when the last watcher of the job drops it.
pub struct Watch {
    pub rx: broadcast::Receiver<()>,
    channel: String,
    hub: Hub,
}

impl Drop for Watch {
    fn drop(&mut self) {
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
            layout,
            channels,
        })
    }

    /// Wake-ups of job `id`, subscribed before this returns for the job's first watcher here.
    /// (A wake-up lost to a race between a last watcher leaving and a new one arriving is
    /// covered by the watcher's periodic re-read.)
    pub async fn watch(&self, id: &str) -> Result<Watch, fred::error::Error> {
        let channel = self.layout.partition_of(id).job(id);
        let (rx, first) = {
            let mut map = self.channels.lock().unwrap_or_else(|e| e.into_inner());
            let entry = map
                .entry(channel.clone())
                .or_insert_with(|| (broadcast::channel(16).0, 0));
            entry.1 += 1;
            (entry.0.subscribe(), entry.1 == 1)
        };
        let watch = Watch {
            rx,
            channel: channel.clone(),
            hub: self.clone(),
        };
        if first {
            // On an error the Watch is dropped, which undoes the registration.
            self.client.subscribe(channel).await?;
        }
        Ok(watch)
    }
}
