//! The kernel manager over the configured kernel store: opened (and migrated) before the
//! gateway serves, and the kernels already in it re-attached, so the first list a client sees
//! after a restart has them.

use std::sync::Arc;

use anyhow::Context;
use gateway_http::manager::Persistence;
use gateway_http::{GatewayConfig, KernelManager};
use resource_managers::Registry;

use crate::settings::StoreSettings;

/// A manager recording its kernels in `store` (none: kernels die with the gateway).
pub(crate) async fn manager(
    config: Arc<GatewayConfig>,
    registry: Registry,
    store: Option<&StoreSettings>,
) -> anyhow::Result<Arc<KernelManager>> {
    let Some(settings) = store else {
        tracing::info!("no kernel store (--store=none): kernels do not outlive this gateway");
        return Ok(KernelManager::new(config, registry));
    };
    let store = gateway_http::store::open(&settings.location, settings.ca_file.as_deref())
        .await
        .context("cannot open the kernel store")?;
    tracing::info!(store = %store.describe(), gateway_id = %settings.gateway_id,
        lease_ttl_secs = settings.lease_ttl.as_secs_f64(), "kernel store opened");
    config
        .readiness
        .register(Arc::new(gateway_http::api::health::StoreCheck::new(
            Arc::clone(&store),
        )));
    let manager = KernelManager::with_persistence(
        config,
        registry,
        Persistence {
            store,
            gateway_id: settings.gateway_id.clone(),
            lease_ttl: settings.lease_ttl,
        },
    );
    manager.recover().await;
    Ok(manager)
}
