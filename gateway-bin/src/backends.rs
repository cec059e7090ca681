//! The resource managers the binary offers: local, and, when the launcher callback listener
//! can bind, ssh (EG's DistributedProcessProxy) and yarn (EG's YarnClusterProcessProxy).

use std::sync::Arc;

use kernel_launcher::response::ResponseListener;
use resource_managers::Registry;
use resource_managers::launcher::LauncherSettings;
use resource_managers::local::LocalResourceManager;
use resource_managers::ssh::{SshConfig, SshResourceManager};
use resource_managers::yarn::{YarnConfig, YarnResourceManager, YarnSecurity};

use crate::settings::Settings;

/// Builds the registry of backends from the settings.
pub(crate) async fn registry(settings: &Settings) -> Registry {
    let mut registry = Registry::new();
    // With a store, local kernels must outlive the gateway so that its next start re-attaches.
    registry.register(Arc::new(
        LocalResourceManager::new(settings.local.clone())
            .outliving_gateway(settings.store.is_some()),
    ));
    match ResponseListener::bind(settings.response_bind, settings.response_options.clone()).await {
        Ok(response) => {
            settings.gateway.readiness.register(Arc::new(
                gateway_http::api::health::CallbackListenerCheck::new(&response),
            ));
            let yarn = &settings.yarn;
            registry.register(Arc::new(YarnResourceManager::new(YarnConfig {
                yarn_endpoint: yarn.endpoint.clone(),
                alt_yarn_endpoint: yarn.alt_endpoint.clone(),
                hadoop_conf_dir: yarn.conf_dir.clone(),
                security: if yarn.kerberos {
                    YarnSecurity::Kerberos
                } else {
                    YarnSecurity::Simple
                },
                ca_bundle: yarn.ca_bundle.clone(),
                launcher: LauncherSettings {
                    search_path: settings.local.search_path.clone(),
                    comm_timeout: settings.comm_timeout,
                    ..LauncherSettings::new(Arc::clone(&response), settings.local.log_dir.clone())
                },
                ..YarnConfig::new(Arc::clone(&response), settings.local.log_dir.clone())
            })));
            crate::docker::register(&mut registry, settings, &response);
            crate::kubernetes::register(&mut registry, settings, &response);
            let ssh = SshConfig {
                remote_hosts: settings.remote_hosts.clone(),
                launcher: LauncherSettings {
                    search_path: settings.local.search_path.clone(),
                    comm_timeout: settings.comm_timeout,
                    ..LauncherSettings::new(response, settings.local.log_dir.clone())
                },
            };
            registry.register(Arc::new(SshResourceManager::with_options(
                ssh,
                settings.ssh.clone(),
            )));
        }
        Err(e) => tracing::warn!(
            "launcher callback listener could not bind {}: {e}; distributed and YARN kernelspecs are unavailable",
            settings.response_bind
        ),
    }
    crate::plugins::register(
        &mut registry,
        &settings.plugins,
        &settings.local.search_path,
    )
    .await;
    registry
}
