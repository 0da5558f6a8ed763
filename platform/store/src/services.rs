//! Add-on processes pinned to a runner (a dedicated `redis-server`): the API writes them into
//! the runner's services hash, the runner runs what its hash holds.

use std::collections::BTreeMap;

use pier_model::platform::ServiceSpec;
use redis::AsyncCommands;

use crate::store::{parse_all, timed, to_json, Store, StoreError};

/// Ports handed to add-on processes: below Linux's ephemeral range (32768 and up), where the
/// runner picks its instances' ports, so the two never meet.
pub const SERVICE_PORTS: std::ops::Range<u16> = 20_000..30_000;

impl Store {
    /// What `runner` must run.
    pub async fn services(&self, runner: &str) -> Result<Vec<ServiceSpec>, StoreError> {
        let raw: BTreeMap<String, String> =
            timed(self.c().hgetall(self.keys.services(runner))).await?;
        Ok(parse_all("service", raw))
    }

    pub async fn put_service(&self, runner: &str, spec: &ServiceSpec) -> Result<(), StoreError> {
        timed(
            self.c()
                .hset::<_, _, _, ()>(self.keys.services(runner), spec.key(), to_json(spec)?),
        )
        .await
    }

    pub async fn delete_service(&self, runner: &str, key: &str) -> Result<(), StoreError> {
        timed(self.c().hdel::<_, _, ()>(self.keys.services(runner), key)).await
    }

    /// The next port for an add-on process on `runner`, cycling through [`SERVICE_PORTS`].
    pub async fn next_service_port(&self, runner: &str) -> Result<u16, StoreError> {
        let n: u64 = timed(self.c().incr(self.keys.service_ports(runner), 1)).await?;
        let span = u64::from(SERVICE_PORTS.end - SERVICE_PORTS.start);
        Ok(SERVICE_PORTS.start + ((n - 1) % span) as u16)
    }
}
