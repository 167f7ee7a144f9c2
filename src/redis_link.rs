//! One connection to Redis for a control-plane task (the fleet's limits and sets,
//! `cluster.rs`; the spool lease, `takeover.rs`): made when asked for, each call bounded by a
//! timeout, and dropped when a call is late or the connection fails, so that the next
//! `connect` makes it again (a Redis that restarted, or a network that came back). A reply
//! that is an error from the server (a refused `CONFIG`, a script's error) keeps it: Redis
//! answered.

use redis::aio::ConnectionManager;
use std::future::Future;
use std::time::Duration;

pub struct RedisLink {
    client: redis::Client,
    conn: Option<ConnectionManager>,
}

impl RedisLink {
    pub fn new(client: redis::Client) -> RedisLink {
        RedisLink { client, conn: None }
    }

    /// Starts with a connection made elsewhere (the spool claim's).
    pub fn with(client: redis::Client, conn: ConnectionManager) -> RedisLink {
        RedisLink { client, conn: Some(conn) }
    }

    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    pub fn is_up(&self) -> bool {
        self.conn.is_some()
    }

    /// Drops the connection (the next `connect` makes it again).
    pub fn close(&mut self) {
        self.conn = None;
    }

    /// Makes the connection if there is none, waiting `within` at most; whether there is one.
    pub async fn connect(&mut self, within: Duration) -> bool {
        if self.conn.is_none() {
            let made = tokio::time::timeout(within, ConnectionManager::new(self.client.clone())).await;
            self.conn = made.ok().and_then(Result::ok);
        }
        self.conn.is_some()
    }

    /// `call` on the connection, within `within`: None when there is no connection, the call
    /// is late, or it fails (the connection dropped unless the server itself answered the
    /// error).
    pub async fn run<T, F, Fut>(&mut self, within: Duration, call: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let conn = self.conn.clone()?;
        match tokio::time::timeout(within, call(conn)).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "Redis call failed");
                if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.is_unrecoverable_error() {
                    self.conn = None;
                }
                None
            }
            Err(_) => {
                self.conn = None;
                None
            }
        }
    }
}
