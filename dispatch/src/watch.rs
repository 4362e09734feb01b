//! Wake-ups for WatchJob: every transition script publishes the job id on the Redis channel
//! `dispatch:watch`; one subscriber per dispatch process fans it out in-process. A watcher
//! then reads the job's history stream from its cursor, so a missed wake-up only delays it
//! until its next periodic read.

use std::sync::Arc;

use fred::prelude::*;
use tokio::sync::broadcast;

use crate::store::WATCH_CHANNEL;

/// In-process fan-out of changed job ids. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    tx: broadcast::Sender<Arc<str>>,
    _client: Arc<fred::clients::SubscriberClient>,
}

impl Hub {
    /// Subscribes to the watch channel (resubscribing after reconnects).
    pub async fn start(redis_url: &str) -> Result<Hub, fred::error::Error> {
        let config = fred::types::config::Config::from_url(redis_url)?;
        let client = Builder::from_config(config)
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
            .build_subscriber_client()?;
        client.init().await?;
        client.manage_subscriptions();
        let (tx, _) = broadcast::channel(4096);
        let mut rx = client.message_rx();
        let fan = tx.clone();
        tokio::spawn(async move {
            while let Ok(msg) = rx.recv().await {
                if let Some(id) = msg.value.as_str() {
                    let _ = fan.send(Arc::from(id.as_ref()));
                }
            }
        });
        client.subscribe(WATCH_CHANNEL).await?;
        Ok(Hub {
            tx,
            _client: Arc::new(client),
        })
    }

    /// A receiver of changed job ids.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.tx.subscribe()
    }
}
