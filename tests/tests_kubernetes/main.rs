//! The `kubernetes` backend against the Kubernetes API-server emulator (`tests::kubernetes`),
//! with gateway_provisioners' own kernelspec (`jupyter-k8s-spec install`), its
//! `launch_kubernetes.py` and `kernel-pod.yaml.j2` from the wheel, and a kernel "image" that
//! runs GP's `launch_ipykernel.py` from the test venv; plus the emulator kept honest by kubectl
//! and the official Python client.
//!
//! * [`e2e_lifecycle`] — start (EG's launcher path and the native path), execute, interrupt,
//!   restart, shutdown; per-kernel namespace and RoleBinding created and removed; re-attach;
//!   in-cluster configuration.
//! * [`e2e_faults`] — each injected fault ends the launch with its real reason before the
//!   deadline and leaves nothing behind; bad `KERNEL_*` values are refused before the API.
//! * [`render`] — hostile `KERNEL_*` values never change the structure of GP's rendered pod.
//! * [`e2e_honesty`] — kubectl and the Python `kubernetes` client against the emulator.
//! * [`profiles`] — a kernel profile's node selector, tolerations, template and resources on
//!   the pod; bad values refused with the field's name.

mod e2e_faults;
mod e2e_honesty;
mod e2e_lifecycle;
mod profiles;
mod render;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use kernel_launcher::env::{EnvInputs, EnvPolicy, compose};
use kernel_launcher::{KernelSpec, ListenerOptions, PortRange, ResponseListener};
use resource_managers::LaunchRequest;
use resource_managers::kubernetes::{
    ClusterConfig, KubernetesConfig, KubernetesResourceManager, LaunchMode,
};
use tests::kubernetes::{EmulatorConfig, Fault, Image, K8sEmulator};

pub(crate) const SECOND: Duration = Duration::from_secs(1);

/// The emulator's bearer token.
pub(crate) const TOKEN: &str = "emulator-token-1";

pub(crate) fn venv() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv")
}

fn gp_dir() -> PathBuf {
    let lib = venv().join("lib");
    std::fs::read_dir(&lib)
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("site-packages/gateway_provisioners"))
        .find(|p| p.is_dir())
        .unwrap_or_else(|| panic!("no gateway_provisioners under {}", lib.display()))
}

/// gateway_provisioners' `kernel-pod.yaml.j2`, as its wheel installed it.
pub(crate) fn gp_template() -> PathBuf {
    gp_dir().join("kernel-launchers/kubernetes/scripts/kernel-pod.yaml.j2")
}

/// A test cluster: the emulator (TLS, bearer token) with the kernel images, a kubeconfig for it,
/// GP's kernelspec, and a response listener.
pub(crate) struct Cluster {
    pub(crate) emu: K8sEmulator,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) kubeconfig: PathBuf,
    pub(crate) spec_dir: PathBuf,
    pub(crate) listener: Arc<ResponseListener>,
}

/// The images: `kernel-py` runs GP's `launch_ipykernel.py` from the venv as elyra's
/// `bootstrap-kernel.sh` does; the others inject faults.
fn images(bootstrap: &Path) -> BTreeMap<String, Image> {
    let path = format!("{}:/usr/bin:/bin", venv().join("bin").display());
    let kernel = Image {
        entrypoint: vec!["/bin/bash".into(), bootstrap.display().to_string()],
        env: BTreeMap::from([("PATH".to_owned(), path)]),
        ..Image::default()
    };
    let with = |fault: Fault| Image {
        fault: Some(fault),
        ..kernel.clone()
    };
    BTreeMap::from([
        ("kernel-py".to_owned(), kernel.clone()),
        ("kernel-py-fails".to_owned(), with(Fault::Fail)),
        (
            "kernel-py-slow".to_owned(),
            with(Fault::SlowStart(Duration::from_millis(1500))),
        ),
        (
            "kernel-py-vanishes".to_owned(),
            with(Fault::Vanish(Duration::from_millis(20))),
        ),
        (
            "kernel-py-unschedulable".to_owned(),
            with(Fault::Unschedulable),
        ),
    ])
}

impl Cluster {
    pub(crate) async fn start() -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let bootstrap = dir.path().join("bootstrap-kernel.sh");
        // The kernel image's launcher: GP's launch_ipykernel.py as its installer assembles it
        // into a kernelspec (the wheel's copy lacks the server listener).
        let image_dir = dir.path().join("image");
        let out = tokio::process::Command::new(venv().join("bin/jupyter-ssh-spec"))
            .arg("install")
            .arg(format!("--prefix={}", image_dir.display()))
            .arg("--kernel-name=image_launchers")
            .kill_on_drop(true)
            .output()
            .await
            .expect("jupyter-ssh-spec runs");
        assert!(
            out.status.success(),
            "jupyter-ssh-spec: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let launcher =
            image_dir.join("share/jupyter/kernels/image_launchers/scripts/launch_ipykernel.py");
        std::fs::write(
            &bootstrap,
            format!(
                "#!/bin/bash\n# What elyra's bootstrap-kernel.sh does for KERNEL_LANGUAGE=python.\n\
                 exec python {} --kernel-id \"$KERNEL_ID\" --port-range \"${{PORT_RANGE:-0..0}}\" \
                 --response-address \"$RESPONSE_ADDRESS\" --public-key \"$PUBLIC_KEY\" \
                 --spark-context-initialization-mode none\n",
                launcher.display()
            ),
        )
        .expect("bootstrap");
        let config = EmulatorConfig {
            token: Some(TOKEN.into()),
            tls: true,
            images: images(&bootstrap),
            ..EmulatorConfig::default()
        };
        let emu = K8sEmulator::start(config, SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("emulator");
        let kubeconfig = dir.path().join("kubeconfig");
        let ca = base64::engine::general_purpose::STANDARD.encode(emu.ca_pem().expect("tls"));
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: emu\nclusters:\n- name: emu\n  cluster:\n    server: {}\n    certificate-authority-data: {ca}\n\
                 users:\n- name: gw\n  user:\n    token: {TOKEN}\ncontexts:\n- name: emu\n  context: {{cluster: emu, user: gw, namespace: default}}\n",
                emu.url()
            ),
        )
        .expect("kubeconfig");
        let prefix = dir.path().join("prefix");
        let out = tokio::process::Command::new(venv().join("bin/jupyter-k8s-spec"))
            .arg("install")
            .arg(format!("--prefix={}", prefix.display()))
            .arg("--kernel-name=k8s_python")
            .arg("--image-name=kernel-py")
            .kill_on_drop(true)
            .output()
            .await
            .expect("jupyter-k8s-spec runs");
        assert!(
            out.status.success(),
            "jupyter-k8s-spec: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let spec_dir = prefix.join("share/jupyter/kernels/k8s_python");
        let listener = ResponseListener::bind(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            ListenerOptions::default(),
        )
        .await
        .expect("listener");
        Cluster {
            emu,
            dir,
            kubeconfig,
            spec_dir,
            listener,
        }
    }

    pub(crate) fn spec(&self) -> KernelSpec {
        KernelSpec::load(&self.spec_dir).expect("GP's kernelspec loads")
    }

    /// The backend's settings for this cluster (kubeconfig, launcher mode, fast polls).
    pub(crate) fn config(&self, mode: LaunchMode) -> KubernetesConfig {
        let cluster = ClusterConfig::from_kubeconfig(std::slice::from_ref(&self.kubeconfig), None)
            .map_err(|e| e.to_string());
        let mut config =
            KubernetesConfig::new(cluster, self.listener.clone(), self.dir.path().join("logs"));
        config.launcher_env = BTreeMap::from([(
            "KUBECONFIG".to_owned(),
            self.kubeconfig.display().to_string(),
        )]);
        config.launcher.search_path = vec![
            venv().join("bin"),
            PathBuf::from("/usr/bin"),
            PathBuf::from("/bin"),
        ];
        config.launcher.poll_interval = Duration::from_millis(100);
        config.launcher.request_timeout = 10 * SECOND;
        config.launch_mode = mode;
        config
    }

    pub(crate) fn backend(&self, mode: LaunchMode) -> KubernetesResourceManager {
        KubernetesResourceManager::new(self.config(mode))
    }

    /// A launch request composed as the gateway does, with these client `KERNEL_*` values.
    pub(crate) fn request(
        &self,
        kernel_id: &str,
        client_env: &[(&str, &str)],
        timeout: Duration,
    ) -> LaunchRequest {
        let spec = self.spec();
        let path = format!("{}:/usr/bin:/bin", venv().join("bin").display());
        let gateway_env = BTreeMap::from([
            ("PATH".to_owned(), path),
            ("HOME".to_owned(), self.dir.path().display().to_string()),
        ]);
        let policy = EnvPolicy {
            client_envs: Vec::new(),
            inherited_envs: gateway_env.keys().cloned().collect(),
            ..EnvPolicy::default()
        };
        let mut request_env: BTreeMap<String, String> =
            BTreeMap::from([("KERNEL_USERNAME".to_owned(), "alice".to_owned())]);
        for (k, v) in client_env {
            request_env.insert((*k).to_owned(), (*v).to_owned());
        }
        let env = compose(&EnvInputs {
            request: Some(&request_env),
            gateway: &gateway_env,
            policy: &policy,
            spec: &spec,
            kernel_id,
            username: "alice",
            impersonation_enabled: false,
        });
        LaunchRequest {
            kernel_id: kernel_id.to_owned(),
            spec,
            env,
            cwd: None,
            port_range: PortRange::ANY,
            timeout,
            previous: None,
            username: "alice".into(),
            run_as: None,
            placement: Default::default(),
        }
    }

    /// Waits (bounded) until no pod is left, the namespace `gone_namespace` (if any) is gone, and no
    /// container process lives; panics with what is left otherwise.
    pub(crate) async fn assert_nothing_left(&self, gone_namespace: Option<&str>) {
        let deadline = tokio::time::Instant::now() + 10 * SECOND;
        loop {
            let pods: Vec<String> = self
                .emu
                .pods()
                .into_iter()
                .map(|p| format!("{}/{}", p.namespace, p.name))
                .collect();
            let ns_left =
                gone_namespace.is_some_and(|ns| self.emu.namespaces().iter().any(|n| n == ns));
            let live = self.emu.live_process_groups();
            let others: Vec<String> = ["services", "configmaps", "secrets", "rolebindings"]
                .iter()
                .flat_map(|k| self.emu.objects(k))
                .map(|(ns, n, _)| format!("{ns}/{n}"))
                .collect();
            if pods.is_empty() && !ns_left && live.is_empty() && others.is_empty() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "left behind: pods {pods:?}, namespace {gone_namespace:?} still there: {ns_left}, live process groups {live:?}, objects {others:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Whether `text` contains `needle`, with the text in the panic message.
#[track_caller]
pub(crate) fn assert_contains(text: &str, needle: &str) {
    assert!(text.contains(needle), "expected {needle:?} in: {text}");
}
