//! The deployment material agrees with itself and with the server: the Kubernetes
//! manifests (deploy/kubernetes) expose, probe and mount what the configuration they ship
//! names; the pod runs unprivileged; that configuration and its policy are ones the server
//! accepts, and a server started on them serves a whole chain; the image (deploy/Dockerfile)
//! builds what the README says and runs as a non-root user; the systemd unit is hardened.
//! `.ci/run` also validates the rendered manifests against the Kubernetes API schemas.

use serde::Deserialize;
use serde_yaml_ng::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use writ_e2e::*;

/// The uid (and gid) the image and the pod run as: distroless's `nonroot`.
const UID: i64 = 65532;

fn read(rel: &str) -> String {
    let path = repo_root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------
// YAML

/// Every document of a YAML file (empty ones skipped).
fn yaml_docs(rel: &str) -> Vec<Value> {
    let text = read(rel);
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{rel}: not YAML: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

/// The value at a dotted `path` ("spec.template.spec"), if there is one.
fn opt<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, key| v.get(key))
}

/// The value at `path`, or a panic naming it and `what` it was looked for in.
fn at<'a>(v: &'a Value, path: &str, what: &str) -> &'a Value {
    opt(v, path).unwrap_or_else(|| panic!("{what}: no `{path}`"))
}

fn string<'a>(v: &'a Value, path: &str, what: &str) -> &'a str {
    at(v, path, what)
        .as_str()
        .unwrap_or_else(|| panic!("{what}: `{path}` is not a string"))
}

fn int(v: &Value, path: &str, what: &str) -> i64 {
    at(v, path, what)
        .as_i64()
        .unwrap_or_else(|| panic!("{what}: `{path}` is not an integer"))
}

fn boolean(v: &Value, path: &str, what: &str) -> bool {
    at(v, path, what)
        .as_bool()
        .unwrap_or_else(|| panic!("{what}: `{path}` is not a boolean"))
}

/// The sequence at `path`; a missing one is empty.
fn list<'a>(v: &'a Value, path: &str) -> &'a [Value] {
    opt(v, path)
        .and_then(Value::as_sequence)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn name(v: &Value) -> &str {
    string(v, "name", "an entry without a name")
}

/// The base manifests (what deploy/kubernetes/kustomization.yaml lists), by file.
struct Manifests {
    docs: Vec<(String, Value)>,
}

impl Manifests {
    fn base() -> Manifests {
        let kustomization = kustomization("deploy/kubernetes");
        let docs = list(&kustomization, "resources")
            .iter()
            .flat_map(|r| {
                let file = format!(
                    "deploy/kubernetes/{}",
                    r.as_str().expect("a resource is a path")
                );
                yaml_docs(&file).into_iter().map(move |d| (file.clone(), d))
            })
            .collect();
        Manifests { docs }
    }

    fn all(&self, kind: &str) -> Vec<&Value> {
        self.docs
            .iter()
            .map(|(_, d)| d)
            .filter(|d| d.get("kind").and_then(Value::as_str) == Some(kind))
            .collect()
    }

    fn one(&self, kind: &str, name: &str) -> &Value {
        let found: Vec<_> = self
            .all(kind)
            .into_iter()
            .filter(|d| opt(d, "metadata.name").and_then(Value::as_str) == Some(name))
            .collect();
        assert_eq!(found.len(), 1, "exactly one {kind} named {name}");
        found[0]
    }

    fn statefulset(&self) -> &Value {
        let sets = self.all("StatefulSet");
        assert_eq!(sets.len(), 1, "one StatefulSet");
        sets[0]
    }
}

fn kustomization(dir: &str) -> Value {
    let mut docs = yaml_docs(&format!("{dir}/kustomization.yaml"));
    assert_eq!(docs.len(), 1, "{dir}/kustomization.yaml: one document");
    docs.remove(0)
}

/// The container named `name` among `containers`.
fn container<'a>(pod: &'a Value, key: &str, name: &str) -> &'a Value {
    list(pod, key)
        .iter()
        .find(|c| c.get("name").and_then(Value::as_str) == Some(name))
        .unwrap_or_else(|| panic!("no {key} entry named {name}"))
}

/// A container's ports, name -> number.
fn container_ports(c: &Value) -> BTreeMap<String, i64> {
    list(c, "ports")
        .iter()
        .map(|p| {
            (
                name(p).to_owned(),
                int(p, "containerPort", "a container port"),
            )
        })
        .collect()
}

/// The container port a Service's `targetPort` or a probe's `port` means: a name or a
/// number, which must be one of the container's.
fn resolve_port(port: &Value, ports: &BTreeMap<String, i64>, what: &str) -> i64 {
    let n = match port {
        Value::String(s) => *ports
            .get(s)
            .unwrap_or_else(|| panic!("{what}: port {s:?} is no container port name")),
        other => other
            .as_i64()
            .unwrap_or_else(|| panic!("{what}: port {other:?} is neither a name nor a number")),
    };
    assert!(
        ports.values().any(|&p| p == n),
        "{what}: port {n} is not a port of the container ({ports:?})"
    );
    n
}

// ---------------------------------------------------------------------------------------
// The configuration files

/// The sections with listeners of their own besides `listen` (the OAuth HTTP listener
/// and the ops listener).
const LISTENER_SECTIONS: [&str; 2] = ["http", "observability"];

/// `text` as the server reads its configuration file, validated.
fn server_config(text: &str, what: &str) -> Config {
    let config: Config =
        toml::from_str(text).unwrap_or_else(|e| panic!("{what}: not a server configuration: {e}"));
    config
        .validate()
        .unwrap_or_else(|e| panic!("{what}: refused by the server: {e}"));
    config
}

fn toml_table(rel: &str) -> toml::Table {
    toml::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: not TOML: {e}"))
}

fn toml_str<'a>(t: &'a toml::Table, path: &str, what: &str) -> &'a str {
    let mut parts = path.split('.').peekable();
    let mut table = t;
    loop {
        let key = parts.next().expect("a non-empty path");
        let v = table
            .get(key)
            .unwrap_or_else(|| panic!("{what}: no `{path}`"));
        if parts.peek().is_none() {
            return v
                .as_str()
                .unwrap_or_else(|| panic!("{what}: `{path}` is not a string"));
        }
        table = v
            .as_table()
            .unwrap_or_else(|| panic!("{what}: `{path}` is not in a table"));
    }
}

/// The three listeners a shipped configuration names explicitly: gRPC, HTTP, ops.
struct Listeners {
    grpc: SocketAddr,
    http: SocketAddr,
    ops: SocketAddr,
}

impl Listeners {
    fn of(t: &toml::Table, what: &str) -> Listeners {
        let addr = |path: &str| -> SocketAddr {
            let s = toml_str(t, path, what);
            let a: SocketAddr = s
                .parse()
                .unwrap_or_else(|e| panic!("{what}: `{path}` = {s:?}: {e}"));
            assert!(
                a.ip().is_unspecified(),
                "{what}: `{path}` = {a} must listen on every interface of the container"
            );
            a
        };
        Listeners {
            grpc: addr("listen"),
            http: addr("http.listen"),
            ops: addr("observability.listen"),
        }
    }

    fn ports(&self) -> BTreeSet<i64> {
        [self.grpc, self.http, self.ops]
            .iter()
            .map(|a| i64::from(a.port()))
            .collect()
    }
}

const KUBE_CONFIG: &str = "deploy/kubernetes/writ.toml";
const KUBE_POLICY: &str = "deploy/kubernetes/policy.toml";
const SPIRE_CONFIG: &str = "deploy/kubernetes/spire/writ.toml";
const IMAGE_CONFIG: &str = "deploy/docker/writ.toml";

// ---------------------------------------------------------------------------------------
// Kubernetes

#[test]
fn the_kustomization_lists_every_manifest_and_each_parses() {
    let dir = repo_root().join("deploy/kubernetes");
    let k = kustomization("deploy/kubernetes");
    let listed: BTreeSet<String> = list(&k, "resources")
        .iter()
        .map(|r| r.as_str().expect("a resource is a path").to_owned())
        .collect();
    let on_disk: BTreeSet<String> = std::fs::read_dir(&dir)
        .expect("deploy/kubernetes")
        .map(|e| {
            e.expect("a directory entry")
                .file_name()
                .into_string()
                .expect("UTF-8")
        })
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    assert_eq!(
        listed, on_disk,
        "every manifest is a resource, and only those"
    );

    for (file, doc) in &Manifests::base().docs {
        for key in ["apiVersion", "kind", "metadata.name"] {
            string(doc, key, file);
        }
        assert!(
            opt(doc, "metadata.namespace").is_none(),
            "{file}: the kustomization sets the namespace"
        );
    }
    // The generated ConfigMaps and the component read files that exist.
    for (dir, k) in [
        ("deploy/kubernetes", &k),
        (
            "deploy/kubernetes/spire",
            &kustomization("deploy/kubernetes/spire"),
        ),
    ] {
        for generator in list(k, "configMapGenerator") {
            for file in list(generator, "files") {
                read(&format!("{dir}/{}", file.as_str().expect("a file name")));
            }
        }
        for patch in list(k, "patches") {
            if let Some(path) = opt(patch, "path").and_then(Value::as_str) {
                assert!(
                    !yaml_docs(&format!("{dir}/{path}")).is_empty(),
                    "{dir}/{path}"
                );
            }
        }
    }
    let generated: BTreeSet<&str> = list(&k, "configMapGenerator").iter().map(name).collect();
    assert_eq!(generated, BTreeSet::from(["writ-config", "writ-policy"]));
    let spire = kustomization("deploy/kubernetes/spire");
    assert_eq!(string(&spire, "kind", "spire"), "Component");
}

#[test]
fn ports_services_and_probes_name_what_the_configuration_listens_on() {
    let m = Manifests::base();
    let listen = Listeners::of(&toml_table(KUBE_CONFIG), KUBE_CONFIG);
    let set = m.statefulset();
    let pod = at(set, "spec.template.spec", "the StatefulSet");
    let writ = container(pod, "containers", "writ");
    let ports = container_ports(writ);
    let numbers: BTreeSet<i64> = ports.values().copied().collect();
    assert_eq!(
        numbers,
        listen.ports(),
        "the container's ports are exactly the configuration's listeners"
    );
    let ops = i64::from(listen.ops.port());

    // Every Service port reaches a container port; callers get gRPC and HTTP from the
    // `writ` Service, and only the ops Service carries the plaintext port.
    let template_labels = at(set, "spec.template.metadata.labels", "the pod template");
    let mut served = BTreeSet::new();
    for svc in m.all("Service") {
        let svc_name = string(svc, "metadata.name", "a Service");
        let selector = at(svc, "spec.selector", svc_name);
        for (k, v) in selector.as_mapping().expect("a selector is a mapping") {
            assert_eq!(
                template_labels.get(k.as_str().expect("a label key")),
                Some(v),
                "Service {svc_name} selects the pod"
            );
        }
        for p in list(svc, "spec.ports") {
            let target = resolve_port(
                at(p, "targetPort", svc_name),
                &ports,
                &format!("Service {svc_name}"),
            );
            assert_eq!(
                int(p, "port", svc_name),
                target,
                "Service {svc_name}: the same port number outside as inside"
            );
            assert_eq!(
                target == ops,
                svc_name == "writ-ops",
                "Service {svc_name}: the plaintext ops port is on writ-ops alone"
            );
            served.insert(target);
        }
    }
    assert_eq!(served, listen.ports(), "every listener has a Service port");
    assert_eq!(
        string(set, "spec.serviceName", "the StatefulSet"),
        string(m.one("Service", "writ"), "metadata.name", "writ"),
    );

    // Probes: gRPC health on the ops listener (the kubelet's gRPC probe cannot do TLS),
    // readiness on /readyz there.
    for probe in ["startupProbe", "livenessProbe"] {
        let port = at(writ, &format!("{probe}.grpc.port"), "the writ container");
        assert_eq!(resolve_port(port, &ports, probe), ops, "{probe}");
    }
    let ready = at(writ, "readinessProbe.httpGet", "the writ container");
    assert_eq!(string(ready, "path", "readinessProbe"), "/readyz");
    assert_eq!(
        resolve_port(
            at(ready, "port", "readinessProbe"),
            &ports,
            "readinessProbe"
        ),
        ops
    );
}

/// The mount that holds `path`: the longest mount path it is under.
fn mount_of<'a>(c: &'a Value, path: &str) -> &'a Value {
    list(c, "volumeMounts")
        .iter()
        .filter(|m| Path::new(path).starts_with(string(m, "mountPath", "a volume mount")))
        .max_by_key(|m| string(m, "mountPath", "a volume mount").len())
        .unwrap_or_else(|| panic!("{path} is in no volume mount"))
}

/// The files a projected volume (or a ConfigMap/Secret volume) provides, relative to its
/// mount, with the object and key each comes from.
fn projected_files(volume: &Value) -> BTreeMap<String, (String, String)> {
    let mut files = BTreeMap::new();
    for source in list(volume, "projected.sources") {
        for kind in ["configMap", "secret"] {
            if let Some(src) = source.get(kind) {
                for item in list(src, "items") {
                    files.insert(
                        string(item, "path", "an item").to_owned(),
                        (
                            name(src).to_owned(),
                            string(item, "key", "an item").to_owned(),
                        ),
                    );
                }
            }
        }
    }
    files
}

#[test]
fn mounts_hold_the_data_directory_the_configuration_and_the_tls_files() {
    let m = Manifests::base();
    let table = toml_table(KUBE_CONFIG);
    let set = m.statefulset();
    let pod = at(set, "spec.template.spec", "the StatefulSet");
    let writ = container(pod, "containers", "writ");
    let volumes: BTreeMap<&str, &Value> =
        list(pod, "volumes").iter().map(|v| (name(v), v)).collect();
    let claims: BTreeSet<&str> = list(set, "spec.volumeClaimTemplates")
        .iter()
        .map(|c| string(c, "metadata.name", "a claim template"))
        .collect();
    for mount in list(writ, "volumeMounts") {
        let n = name(mount);
        assert!(
            volumes.contains_key(n) != claims.contains(n),
            "volume mount {n} is exactly one volume or claim template"
        );
    }

    // The data directory is on the persistent volume: at its root or in a directory
    // Writ creates inside it (the volume's root belongs to the fsGroup and may hold
    // lost+found; Writ refuses a data directory its group can enter).
    let data_dir = toml_str(&table, "data_dir", KUBE_CONFIG);
    let data = mount_of(writ, data_dir);
    assert!(
        claims.contains(name(data)),
        "data_dir {data_dir} is on a claim template's volume, not {}",
        name(data)
    );
    let under = Path::new(data_dir)
        .strip_prefix(string(data, "mountPath", "the data mount"))
        .expect("under its mount");
    assert!(
        under.components().count() <= 1,
        "data_dir {data_dir} is the volume or one directory inside it"
    );
    assert_ne!(
        opt(data, "readOnly"),
        Some(&Value::Bool(true)),
        "the data volume is writable"
    );
    let retain = at(
        set,
        "spec.persistentVolumeClaimRetentionPolicy",
        "the StatefulSet",
    );
    assert_eq!(string(retain, "whenDeleted", "retention"), "Retain");
    assert_eq!(string(retain, "whenScaled", "retention"), "Retain");

    // The configuration file the container is told to read, the policy and the TLS files
    // the configuration names: all in the read-only config volume, from the generated
    // ConfigMaps and the Secret.
    let args: Vec<&str> = list(writ, "args")
        .iter()
        .map(|a| a.as_str().expect("an argument"))
        .collect();
    let config_path = args
        .windows(2)
        .find(|w| w[0] == "--config")
        .map(|w| w[1])
        .expect("the container names its --config");
    assert_eq!(args.first(), Some(&"serve"));
    let secret = m.one("Secret", "writ-tls");
    let expected = [
        (config_path, ("writ-config", "writ.toml")),
        (
            toml_str(&table, "policy", KUBE_CONFIG),
            ("writ-policy", "policy.toml"),
        ),
        (
            toml_str(&table, "tls.cert", KUBE_CONFIG),
            ("writ-tls", "tls.crt"),
        ),
        (
            toml_str(&table, "tls.key", KUBE_CONFIG),
            ("writ-tls", "tls.key"),
        ),
        (
            toml_str(&table, "tls.client_ca", KUBE_CONFIG),
            ("writ-tls", "ca.crt"),
        ),
    ];
    for (path, (object, key)) in expected {
        let mount = mount_of(writ, path);
        assert_eq!(
            opt(mount, "readOnly"),
            Some(&Value::Bool(true)),
            "{path}: read-only"
        );
        let volume = volumes
            .get(name(mount))
            .unwrap_or_else(|| panic!("{path}: its mount is no pod volume"));
        let rel = Path::new(path)
            .strip_prefix(string(mount, "mountPath", "a mount"))
            .expect("under its mount")
            .to_str()
            .expect("UTF-8")
            .to_owned();
        assert_eq!(
            projected_files(volume).get(&rel),
            Some(&(object.to_owned(), key.to_owned())),
            "{path} is {object}'s {key}"
        );
        if object == "writ-tls" {
            let data = at(secret, "stringData", "the Secret");
            assert!(data.get(key).is_some(), "the Secret has {key}");
        }
    }
    // The key is readable by the pod's group only (fsGroup), never by others.
    let config_volume = volumes[name(mount_of(writ, config_path))];
    assert_eq!(
        int(config_volume, "projected.defaultMode", "the config volume"),
        0o440
    );
    // And no file is mounted with subPath, which would never see an update.
    for mount in list(writ, "volumeMounts") {
        assert!(
            opt(mount, "subPath").is_none(),
            "{}: no subPath",
            name(mount)
        );
    }
}

/// The restricted Pod Security Standard, and more, for one container.
fn assert_unprivileged(c: &Value, what: &str) {
    let sc = at(c, "securityContext", what);
    assert!(!boolean(sc, "allowPrivilegeEscalation", what), "{what}");
    assert!(boolean(sc, "readOnlyRootFilesystem", what), "{what}");
    assert!(boolean(sc, "runAsNonRoot", what), "{what}");
    assert_ne!(opt(sc, "privileged"), Some(&Value::Bool(true)), "{what}");
    let dropped: Vec<&str> = list(sc, "capabilities.drop")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(dropped, ["ALL"], "{what}: every capability dropped");
    assert!(
        list(sc, "capabilities.add").is_empty(),
        "{what}: none added"
    );
    assert_eq!(string(sc, "seccompProfile.type", what), "RuntimeDefault");
    if let Some(uid) = opt(sc, "runAsUser") {
        assert_ne!(uid.as_i64(), Some(0), "{what}: not root");
    }
    for kind in ["cpu", "memory"] {
        for bound in ["requests", "limits"] {
            at(c, &format!("resources.{bound}.{kind}"), what);
        }
    }
}

#[test]
fn the_pod_runs_unprivileged_with_one_replica_and_a_disruption_budget() {
    let m = Manifests::base();
    let set = m.statefulset();
    assert_eq!(
        int(set, "spec.replicas", "the StatefulSet"),
        1,
        "RocksDB is single-node"
    );
    let pod = at(set, "spec.template.spec", "the StatefulSet");
    let sc = at(pod, "securityContext", "the pod");
    assert!(boolean(sc, "runAsNonRoot", "the pod"));
    assert_eq!(int(sc, "runAsUser", "the pod"), UID);
    assert_eq!(int(sc, "runAsGroup", "the pod"), UID);
    assert_eq!(int(sc, "fsGroup", "the pod"), UID);
    // A recursive fsGroup walk on every start would open the data directory to the group,
    // and Writ would refuse to start.
    assert_eq!(
        string(sc, "fsGroupChangePolicy", "the pod"),
        "OnRootMismatch"
    );
    assert_eq!(
        string(sc, "seccompProfile.type", "the pod"),
        "RuntimeDefault"
    );
    assert!(!boolean(pod, "automountServiceAccountToken", "the pod"));
    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        assert_ne!(opt(pod, host), Some(&Value::Bool(true)), "{host}");
    }
    for key in ["containers", "initContainers"] {
        for c in list(pod, key) {
            assert_unprivileged(c, name(c));
        }
    }
    let account = string(pod, "serviceAccountName", "the pod");
    let sa = m.one("ServiceAccount", account);
    assert!(!boolean(sa, "automountServiceAccountToken", account));

    let labels = at(set, "spec.template.metadata.labels", "the pod template");
    for selector in [
        at(set, "spec.selector.matchLabels", "the StatefulSet"),
        at(
            m.one("PodDisruptionBudget", "writ"),
            "spec.selector.matchLabels",
            "the PDB",
        ),
    ] {
        for (k, v) in selector.as_mapping().expect("labels") {
            assert_eq!(
                labels.get(k.as_str().expect("a key")),
                Some(v),
                "selects the pod"
            );
        }
    }
    let pdb = m.one("PodDisruptionBudget", "writ");
    assert_eq!(int(pdb, "spec.minAvailable", "the PDB"), 1);
    assert_eq!(
        string(pdb, "spec.unhealthyPodEvictionPolicy", "the PDB"),
        "AlwaysAllow"
    );
}

#[test]
fn the_secret_holds_only_marked_placeholders() {
    let m = Manifests::base();
    let secret = m.one("Secret", "writ-tls");
    assert!(
        opt(secret, "data").is_none(),
        "placeholders are stringData, readable"
    );
    let data = at(secret, "stringData", "the Secret")
        .as_mapping()
        .expect("a mapping");
    let keys: BTreeSet<&str> = data.keys().filter_map(Value::as_str).collect();
    assert_eq!(keys, BTreeSet::from(["tls.crt", "tls.key", "ca.crt"]));
    for (k, v) in data {
        let v = v.as_str().expect("a string");
        assert!(
            v.starts_with("REPLACE"),
            "{k:?} is a marked placeholder, not {v:?}"
        );
        assert!(
            !v.contains("-----BEGIN"),
            "{k:?}: no key material in the repository"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_configuration_and_policy_serve_a_chain() {
    serve_a_chain_on(KUBE_CONFIG, |_| {}).await;
}

/// Starts a server on the shipped configuration `rel` (its listeners on loopback, the
/// development CA, the repository's policy, then `storage` applied) and serves the
/// policy's example chain through it.
async fn serve_a_chain_on(rel: &str, storage: impl FnOnce(&mut Config)) {
    let text = read(rel);
    let config = server_config(&text, rel);
    assert!(config.tls.enabled && !config.auth.asserted_identities);
    let policy_path = repo_root().join(KUBE_POLICY);
    let policy = writ_server::policy::Policy::read(&policy_path, Some(&config.trust_domain))
        .unwrap_or_else(|e| panic!("{KUBE_POLICY}: {e}"));
    let stranger = format!("spiffe://{}/ns/default/sa/stranger", config.trust_domain);
    assert!(
        policy.registry().resolve(&stranger).is_none(),
        "{KUBE_POLICY}: only registered parties exist (open_trust_domain = false)"
    );

    // The same configuration on loopback ports, in a temporary data directory (the
    // harness's), with the development CA instead of the Secret's files and the
    // repository's policy file.
    let mut table: toml::Table = toml::from_str(&text).expect("TOML");
    for section in LISTENER_SECTIONS {
        if let Some(t) = table.get_mut(section).and_then(toml::Value::as_table_mut) {
            t.insert("listen".into(), "127.0.0.1:0".into());
        }
    }
    let local = server_config(&toml::to_string(&table).expect("TOML"), rel);
    let srv = TestServer::start_proven_with(move |c| {
        *c = local;
        c.tls.cert = None;
        c.tls.key = None;
        c.tls.client_ca = None;
        c.policy = Some(policy_path);
        storage(c);
    })
    .await;

    // The example chain of the policy: the gateway's transaction for the booking agent,
    // narrowed for the payments API, which checks a charge.
    let booking = "ns/agents/sa/booking-agent";
    let payments = "ns/payments/sa/payments-api";
    let mut minter = srv.minter().await;
    let root = minter
        .mint(pb::MintRequest {
            ttl_seconds: 60,
            ..mint_request(
                "alice",
                build::agent(&srv.spiffe(booking)),
                &[&srv.spiffe(payments)],
                &["payments:charge"],
                vec![("amount_eur", build::max(200))],
            )
        })
        .await
        .unwrap_or_else(|e| panic!("minting under the shipped policy: {e}"));
    let hop = srv
        .svid_client(booking)
        .await
        .downscope(child(
            &root.token,
            build::workload(&srv.spiffe(payments)),
            &[],
            &["payments:charge"],
            vec![],
        ))
        .await
        .unwrap_or_else(|e| panic!("downscoping under the shipped policy: {e}"));
    let mut api = srv.svid_client(payments).await;
    let charge = |amount| {
        check(
            &hop.token,
            "payments:charge",
            vec![("amount_eur", build::int(amount))],
        )
    };
    // payments:charge is high-privilege in the shipped policy: within the ceiling, the
    // charge waits for the user's consent; above it, the ceiling's claim refuses first.
    let latent = api.validate(charge(120)).await.expect("validating");
    let decision = latent.decision.expect("a decision");
    assert!(
        latent.active && !decision.allowed && decision.consent_required,
        "{decision:?}"
    );
    let denied = api.validate(charge(900)).await.expect("validating");
    let decision = denied.decision.expect("a decision");
    assert!(
        !decision.allowed && !decision.consent_required && decision.denied_by == "amount_eur",
        "the ceiling holds: {decision:?}"
    );
}

#[test]
fn the_spire_component_points_writ_at_what_spiffe_helper_writes() {
    // helper.conf is HCL; these are its `key = value` lines.
    let helper: BTreeMap<String, String> = read("deploy/kubernetes/spire/helper.conf")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("helper.conf: {l:?}"));
            (k.trim().to_owned(), v.trim().trim_matches('"').to_owned())
        })
        .collect();
    let dir = Path::new(&helper["cert_dir"]);
    let spire = toml_table(SPIRE_CONFIG);
    for (key, file) in [
        ("tls.cert", "svid_file_name"),
        ("tls.key", "svid_key_file_name"),
        ("tls.client_ca", "svid_bundle_file_name"),
    ] {
        assert_eq!(
            Path::new(toml_str(&spire, key, SPIRE_CONFIG)),
            dir.join(&helper[file]),
            "{key} is spiffe-helper's {file}"
        );
    }
    assert_eq!(helper["include_federated_domains"], "false");
    assert_eq!(helper["add_intermediates_to_bundle"], "false");
    server_config(&read(SPIRE_CONFIG), SPIRE_CONFIG);

    // Apart from [tls] and [auth.jwt_svid_bundle], the same configuration as without SPIRE.
    let mut base = toml_table(KUBE_CONFIG);
    let mut with_spire = spire.clone();
    for t in [&mut base, &mut with_spire] {
        t.remove("tls");
        if let Some(auth) = t.get_mut("auth").and_then(toml::Value::as_table_mut) {
            auth.remove("jwt_svid_bundle");
        }
    }
    assert_eq!(
        base, with_spire,
        "{SPIRE_CONFIG} differs from {KUBE_CONFIG} only in TLS"
    );

    // The patch mounts what both sides name.
    let patch = &yaml_docs("deploy/kubernetes/spire/statefulset.yaml")[0];
    let pod = at(patch, "spec.template.spec", "the SPIRE patch");
    let volumes: BTreeMap<&str, &Value> =
        list(pod, "volumes").iter().map(|v| (name(v), v)).collect();
    let writ = container(pod, "containers", "writ");
    let certs = mount_of(writ, &helper["cert_dir"]);
    assert_eq!(string(certs, "mountPath", "certs"), helper["cert_dir"]);
    assert_eq!(opt(certs, "readOnly"), Some(&Value::Bool(true)));
    assert_eq!(
        string(volumes[name(certs)], "emptyDir.medium", "the SVID volume"),
        "Memory",
        "the SVID's key never touches a disk"
    );
    let bundle = toml_str(&spire, "auth.jwt_svid_bundle", SPIRE_CONFIG);
    let bundle_volume = volumes[name(mount_of(writ, bundle))];
    let item = &list(bundle_volume, "configMap.items")[0];
    assert_eq!(
        Path::new(string(mount_of(writ, bundle), "mountPath", "bundle"))
            .join(string(item, "path", "item")),
        Path::new(bundle)
    );
    assert!(
        projected_files(volumes["config"])
            .values()
            .all(|(object, _)| object != "writ-tls"),
        "with SPIRE the Secret is not mounted"
    );
    for c in list(pod, "initContainers") {
        assert_unprivileged(c, name(c));
        let api = mount_of(c, &helper["agent_address"]);
        assert_eq!(
            string(volumes[name(api)], "csi.driver", "the Workload API volume"),
            "csi.spiffe.io"
        );
        assert_eq!(
            string(mount_of(c, &helper["cert_dir"]), "name", "certs"),
            name(certs)
        );
    }
    let sidecar = container(pod, "initContainers", "spiffe-helper");
    assert_eq!(string(sidecar, "restartPolicy", "the sidecar"), "Always");
}

// ---------------------------------------------------------------------------------------
// Kubernetes on a Redis Cluster (the redis component)

const REDIS_DIR: &str = "deploy/kubernetes/redis";
const REDIS_CONFIG: &str = "deploy/kubernetes/redis/writ.toml";
const REDIS_CONF: &str = "deploy/kubernetes/redis/redis.conf";

/// The redis component's own manifests (its `resources`), by file.
fn redis_manifests() -> Manifests {
    let k = kustomization(REDIS_DIR);
    let docs = list(&k, "resources")
        .iter()
        .flat_map(|r| {
            let file = format!("{REDIS_DIR}/{}", r.as_str().expect("a resource is a path"));
            yaml_docs(&file).into_iter().map(move |d| (file.clone(), d))
        })
        .collect();
    Manifests { docs }
}

/// The component's inline patches, parsed.
fn redis_patches() -> Vec<Value> {
    list(&kustomization(REDIS_DIR), "patches")
        .iter()
        .map(|p| {
            let text = string(p, "patch", "an inline patch of the redis component");
            serde_yaml_ng::from_str(text).expect("a patch is YAML")
        })
        .collect()
}

#[test]
fn the_redis_component_replaces_the_statefulset_and_lists_every_manifest() {
    let k = kustomization(REDIS_DIR);
    assert_eq!(string(&k, "kind", REDIS_DIR), "Component");
    let listed: BTreeSet<String> = list(&k, "resources")
        .iter()
        .map(|r| r.as_str().expect("a resource is a path").to_owned())
        .collect();
    let on_disk: BTreeSet<String> = std::fs::read_dir(repo_root().join(REDIS_DIR))
        .expect("deploy/kubernetes/redis")
        .map(|e| {
            e.expect("a directory entry")
                .file_name()
                .into_string()
                .expect("UTF-8")
        })
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    assert_eq!(
        listed, on_disk,
        "every manifest is a resource, and only those (patches are inline)"
    );
    for (file, doc) in &redis_manifests().docs {
        for key in ["apiVersion", "kind", "metadata.name"] {
            string(doc, key, file);
        }
        assert!(
            opt(doc, "metadata.namespace").is_none(),
            "{file}: the kustomization sets the namespace"
        );
    }
    // It replaces the base's writ-config with its writ.toml.
    let generators = list(&k, "configMapGenerator");
    assert_eq!(generators.len(), 1);
    assert_eq!(name(&generators[0]), "writ-config");
    assert_eq!(string(&generators[0], "behavior", "writ-config"), "replace");
    let files: Vec<&str> = list(&generators[0], "files")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(files, ["writ.toml"]);

    // Deletes the StatefulSet; the PDB allows one pod down, whatever the replica count.
    let patches = redis_patches();
    let deleted: Vec<&Value> = patches
        .iter()
        .filter(|p| opt(p, "$patch").and_then(Value::as_str) == Some("delete"))
        .collect();
    assert_eq!(deleted.len(), 1);
    assert_eq!(
        string(deleted[0], "kind", "the delete patch"),
        "StatefulSet"
    );
    let base = Manifests::base();
    assert_eq!(
        string(deleted[0], "metadata.name", "the delete patch"),
        string(base.statefulset(), "metadata.name", "the StatefulSet")
    );
    let pdb = patches
        .iter()
        .find(|p| opt(p, "kind").and_then(Value::as_str) == Some("PodDisruptionBudget"))
        .expect("a PDB patch");
    assert_eq!(
        string(pdb, "metadata.name", "the PDB patch"),
        string(
            base.one("PodDisruptionBudget", "writ"),
            "metadata.name",
            "the PDB"
        )
    );
    assert_eq!(int(pdb, "spec.maxUnavailable", "the PDB patch"), 1);
    assert_eq!(
        opt(pdb, "spec.minAvailable"),
        Some(&Value::Null),
        "the base's minAvailable is removed (a PDB takes one of the two)"
    );
}

#[test]
fn the_redis_deployment_serves_what_its_configuration_names_unprivileged() {
    let base = Manifests::base();
    let m = redis_manifests();
    let deployments = m.all("Deployment");
    assert_eq!(deployments.len(), 1, "one Deployment");
    let dep = deployments[0];
    assert!(
        int(dep, "spec.replicas", "the Deployment") >= 2,
        "several stateless nodes"
    );
    assert_eq!(
        int(
            dep,
            "spec.strategy.rollingUpdate.maxUnavailable",
            "the Deployment"
        ),
        0,
        "a rollout adds a ready pod before it takes one away"
    );
    let labels = at(dep, "spec.template.metadata.labels", "the pod template");
    let selects = |selector: &Value, what: &str| {
        for (k, v) in selector.as_mapping().expect("labels") {
            assert_eq!(
                labels.get(k.as_str().expect("a key")),
                Some(v),
                "{what} selects the Deployment's pods"
            );
        }
    };
    selects(
        at(dep, "spec.selector.matchLabels", "the Deployment"),
        "the Deployment",
    );
    selects(
        at(
            base.one("PodDisruptionBudget", "writ"),
            "spec.selector.matchLabels",
            "the PDB",
        ),
        "the PDB",
    );
    for svc in base.all("Service") {
        let svc_name = string(svc, "metadata.name", "a Service");
        selects(at(svc, "spec.selector", svc_name), svc_name);
    }

    // The pod: as the base's, unprivileged, every container bounded.
    let pod = at(dep, "spec.template.spec", "the Deployment");
    let base_pod = at(base.statefulset(), "spec.template.spec", "the StatefulSet");
    for key in ["securityContext", "serviceAccountName"] {
        assert_eq!(
            at(pod, key, "the pod"),
            at(base_pod, key, "the base pod"),
            "{key}"
        );
    }
    assert!(!boolean(pod, "automountServiceAccountToken", "the pod"));
    for key in ["containers", "initContainers"] {
        for c in list(pod, key) {
            assert_unprivileged(c, name(c));
        }
    }

    // Ports and probes: the configuration's listeners, as in the base.
    let table = toml_table(REDIS_CONFIG);
    let listen = Listeners::of(&table, REDIS_CONFIG);
    let writ = container(pod, "containers", "writ");
    let base_writ = container(base_pod, "containers", "writ");
    let ports = container_ports(writ);
    assert_eq!(ports, container_ports(base_writ));
    let numbers: BTreeSet<i64> = ports.values().copied().collect();
    assert_eq!(numbers, listen.ports());
    for probe in ["startupProbe", "livenessProbe"] {
        let port = at(writ, &format!("{probe}.grpc.port"), "the writ container");
        assert_eq!(
            resolve_port(port, &ports, probe),
            i64::from(listen.ops.port())
        );
    }
    assert_eq!(
        at(writ, "readinessProbe", "the writ container"),
        at(base_writ, "readinessProbe", "the base container")
    );
    assert_eq!(at(writ, "args", "writ"), at(base_writ, "args", "base"));

    // The config volume is the base's (writ.toml, policy, TLS), mounted the same way.
    let volumes: BTreeMap<&str, &Value> =
        list(pod, "volumes").iter().map(|v| (name(v), v)).collect();
    let base_volumes: BTreeMap<&str, &Value> = list(base_pod, "volumes")
        .iter()
        .map(|v| (name(v), v))
        .collect();
    let config_mount = mount_of(writ, "/etc/writ/writ.toml");
    assert_eq!(
        config_mount,
        mount_of(base_writ, "/etc/writ/writ.toml"),
        "the configuration is mounted as in the base"
    );
    assert_eq!(
        volumes[name(config_mount)],
        base_volumes[name(config_mount)],
        "the config volume is the base's"
    );
    for mount in list(writ, "volumeMounts") {
        assert!(
            volumes.contains_key(name(mount)),
            "{}: a pod volume (no claims)",
            name(mount)
        );
        assert!(
            opt(mount, "subPath").is_none(),
            "{}: no subPath",
            name(mount)
        );
    }

    // The data directory: a pod-local volume that the init container fills with exactly
    // the shared secrets, owner-only, before Writ starts.
    let data_dir = toml_str(&table, "data_dir", REDIS_CONFIG);
    let data = mount_of(writ, data_dir);
    let data_volume = volumes[name(data)];
    assert_eq!(
        string(data_volume, "emptyDir.medium", "the data volume"),
        "Memory",
        "the key ring never touches a disk"
    );
    let init = container(pod, "initContainers", "data-dir");
    assert_eq!(
        name(mount_of(init, data_dir)),
        name(data),
        "the init container writes the data volume"
    );
    let script = list(init, "command")
        .iter()
        .filter_map(Value::as_str)
        .collect::<Vec<_>>()
        .join(" ");
    assert!(script.contains("umask 077"), "owner-only files: {script}");
    assert!(script.contains(&format!("mkdir -p {data_dir}")), "{script}");
    let secret = m.one("Secret", "writ-node-secrets");
    let secret_name = string(secret, "metadata.name", "the Secret");
    let secret_mount = list(init, "volumeMounts")
        .iter()
        .find(|mount| {
            opt(volumes[name(mount)], "secret.secretName").and_then(Value::as_str)
                == Some(secret_name)
        })
        .expect("the init container mounts writ-node-secrets");
    assert_eq!(opt(secret_mount, "readOnly"), Some(&Value::Bool(true)));
    let secret_volume = volumes[name(secret_mount)];
    assert_eq!(
        int(secret_volume, "secret.defaultMode", "the Secret volume"),
        0o440
    );
    let copied: BTreeSet<&str> = list(secret_volume, "secret.items")
        .iter()
        .map(|i| {
            let path = string(i, "path", "an item");
            let from = format!("{}/{path}", string(secret_mount, "mountPath", "the mount"));
            assert!(script.contains(&from), "the init container copies {from}");
            assert_eq!(string(i, "key", "an item"), path);
            path
        })
        .collect();
    assert_eq!(
        copied,
        BTreeSet::from([
            writ_server::secrets::KEYS_FILE,
            writ_server::signing::SIGNING_KEYS_FILE,
        ]),
        "every node gets the shared key ring and signing keys"
    );
    assert!(
        list(writ, "volumeMounts")
            .iter()
            .all(|mount| name(mount) != name(secret_mount)),
        "Writ itself reads its copies, not the Secret"
    );

    // How Writ reaches the cluster: every file [storage.redis] names is an item of the
    // writ-redis-client Secret, mounted read-only, readable by the pod's group only.
    let config = server_config(&read(REDIS_CONFIG), REDIS_CONFIG);
    let r = &config.storage.redis;
    let client = m.one("Secret", "writ-redis-client");
    let client_keys = at(client, "stringData", "writ-redis-client");
    for (key, file) in [
        ("ca", &r.ca),
        ("client_cert", &r.client_cert),
        ("client_key", &r.client_key),
        ("password_file", &r.password_file),
    ] {
        let file = file
            .as_deref()
            .unwrap_or_else(|| panic!("storage.redis.{key} is set"));
        let file = file.to_str().expect("a UTF-8 path");
        let mount = mount_of(writ, file);
        assert_eq!(opt(mount, "readOnly"), Some(&Value::Bool(true)), "{key}");
        let volume = volumes[name(mount)];
        assert_eq!(
            opt(volume, "secret.secretName").and_then(Value::as_str),
            Some("writ-redis-client"),
            "storage.redis.{key} comes from writ-redis-client"
        );
        assert_eq!(
            int(volume, "secret.defaultMode", "writ-redis-client"),
            0o440
        );
        let path = file
            .strip_prefix(string(mount, "mountPath", "the mount"))
            .expect("under the mount")
            .trim_start_matches('/');
        let item = list(volume, "secret.items")
            .iter()
            .find(|i| string(i, "path", "an item") == path)
            .unwrap_or_else(|| panic!("storage.redis.{key}: no item {path}"));
        assert!(
            client_keys.get(string(item, "key", "an item")).is_some(),
            "the Secret holds {path}"
        );
    }
    assert!(r.username.is_some(), "Writ connects as its ACL user");
    assert!(
        r.nodes.iter().all(|n| n.starts_with("rediss://")) && !r.allow_plaintext,
        "the cluster is reached over TLS"
    );
    assert!(
        opt(writ, "env").is_none_or(|e| !format!("{e:?}").contains("WRIT_REDIS_NODES")),
        "no node URLs (with credentials) from the environment"
    );
}

#[test]
fn the_redis_secret_holds_only_marked_placeholders() {
    let m = redis_manifests();
    for name in ["writ-node-secrets", "writ-redis-client"] {
        let secret = m.one("Secret", name);
        assert!(opt(secret, "data").is_none(), "placeholders are stringData");
        for (k, v) in at(secret, "stringData", name)
            .as_mapping()
            .expect("a mapping")
        {
            let v = v.as_str().expect("a string");
            assert!(
                v.starts_with("REPLACE"),
                "{name} {k:?} is a marked placeholder"
            );
            assert!(
                !v.contains("-----BEGIN") && !v.contains("[[keys]]"),
                "{name} {k:?}"
            );
        }
    }
}

/// `redis.conf`'s `directive value` lines.
fn redis_conf() -> BTreeMap<String, String> {
    read(REDIS_CONF)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once(char::is_whitespace)
                .unwrap_or_else(|| panic!("{REDIS_CONF}: {l:?}"));
            (k.to_owned(), v.trim().to_owned())
        })
        .collect()
}

#[test]
fn the_redis_configuration_agrees_with_the_cluster_settings_and_the_base() {
    let config = server_config(&read(REDIS_CONFIG), REDIS_CONFIG);
    assert_eq!(config.storage.backend, writ_server::config::Backend::Redis);
    assert!(config.tls.enabled && !config.auth.asserted_identities);
    let redis = &config.storage.redis;
    assert!(redis.required_replicas >= 1, "a write waits for a replica");
    let conf = redis_conf();
    for (directive, value) in [
        ("cluster-enabled", "yes"),
        ("cluster-require-full-coverage", "no"),
        ("appendonly", "yes"),
        ("appendfsync", "always"),
        ("maxmemory-policy", "noeviction"),
    ] {
        assert_eq!(
            conf.get(directive).map(String::as_str),
            Some(value),
            "{REDIS_CONF}: {directive}"
        );
    }
    assert_eq!(
        conf.get("min-replicas-to-write"),
        Some(&redis.required_replicas.to_string()),
        "a master refuses what its replicas cannot acknowledge"
    );
    // The script that starts the local cluster uses the same durability settings.
    let script = read("scripts/redis-cluster");
    for directive in [
        "cluster-require-full-coverage",
        "appendonly",
        "appendfsync",
        "min-replicas-to-write",
    ] {
        let line = format!("{directive} {}", conf[directive]);
        assert!(
            script.lines().any(|l| l.trim() == line),
            "scripts/redis-cluster: {line}"
        );
    }
    // The ACL user's rules are one text: the script's (the store's tests run as that
    // user), redis.conf's and DEPLOY.md's.
    let rules = script
        .lines()
        .find_map(|l| l.strip_prefix("writ_acl='"))
        .and_then(|l| l.strip_suffix('\''))
        .expect("scripts/redis-cluster: writ_acl='...'");
    let user = format!(
        "user {} on >PASSWORD ~{}:* {rules}",
        redis.username.as_deref().expect("storage.redis.username"),
        redis.prefix
    );
    assert!(
        read(REDIS_CONF)
            .lines()
            .any(|l| l.trim_start_matches(['#', ' ']) == user),
        "{REDIS_CONF}: {user}"
    );
    let setuser = format!("ACL SETUSER {}", &user["user ".len()..]);
    assert!(
        read("DEPLOY.md").lines().any(|l| l.trim() == setuser),
        "DEPLOY.md: {setuser}"
    );
    // No node rotates the shared signing keys on its own before the operator does.
    assert_eq!(
        config.signing.rotate_after_seconds,
        365 * 86_400,
        "signing.rotate_after_seconds: the longest allowed"
    );

    // Apart from [storage] and [signing], the base configuration.
    let mut base = toml_table(KUBE_CONFIG);
    let mut with_redis = toml_table(REDIS_CONFIG);
    for t in [&mut base, &mut with_redis] {
        t.remove("storage");
        t.remove("signing");
    }
    assert_eq!(
        base, with_redis,
        "{REDIS_CONFIG} differs from {KUBE_CONFIG} only in [storage] and [signing]"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_configuration_and_policy_serve_a_chain() {
    // On this test binary's local cluster over TLS, as the ACL user the docs give (the
    // files [storage.redis] names replaced by the test cluster's), under a namespace of
    // its own.
    serve_a_chain_on(REDIS_CONFIG, writ_e2e::redis::use_tls_cluster).await;
}

// ---------------------------------------------------------------------------------------
// The image

/// One Dockerfile instruction (continuations joined, comments dropped) and the stage
/// (counted from 1 at each FROM; 0 before the first) it belongs to.
struct Instruction {
    stage: usize,
    keyword: String,
    args: String,
}

fn dockerfile() -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut stage = 0;
    let mut pending = String::new();
    for line in read("deploy/Dockerfile").lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(trimmed);
        let text = std::mem::take(&mut pending);
        let (keyword, args) = text.split_once(char::is_whitespace).unwrap_or((&text, ""));
        let keyword = keyword.to_ascii_uppercase();
        if keyword == "FROM" {
            stage += 1;
        }
        out.push(Instruction {
            stage,
            keyword,
            args: args.split_whitespace().collect::<Vec<_>>().join(" "),
        });
    }
    assert!(
        pending.is_empty(),
        "the Dockerfile ends inside a continuation"
    );
    out
}

/// The one `cargo build ...` command of the Dockerfile, up to the next `&&`.
fn dockerfile_build_command(instructions: &[Instruction]) -> String {
    let builds: Vec<&str> = instructions
        .iter()
        .filter(|i| i.keyword == "RUN")
        .filter_map(|i| i.args.find("cargo build").map(|at| &i.args[at..]))
        .collect();
    assert_eq!(builds.len(), 1, "one cargo build in the Dockerfile");
    builds[0]
        .split("&&")
        .next()
        .expect("a command")
        .trim()
        .to_owned()
}

/// The commands in the README's "Build and deploy" section's code blocks (comments
/// after `#` dropped).
fn readme_deploy_commands() -> Vec<String> {
    let readme = read("README.md");
    let start = readme
        .find("\n## Build and deploy\n")
        .expect("the README has a \"Build and deploy\" section");
    let section = &readme[start + 1..];
    let section = &section[..section[1..].find("\n## ").map_or(section.len(), |e| e + 1)];
    let mut commands = Vec::new();
    let mut in_code = false;
    for line in section.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        } else if in_code {
            let command = line.split(" #").next().unwrap_or("").trim();
            if !command.is_empty() {
                commands.push(command.split_whitespace().collect::<Vec<_>>().join(" "));
            }
        }
    }
    commands
}

#[test]
fn the_image_builds_what_the_readme_says_and_runs_as_non_root() {
    let ins = dockerfile();
    let build = dockerfile_build_command(&ins);
    assert!(
        build.starts_with("cargo build --release --locked"),
        "{build}"
    );
    assert!(
        readme_deploy_commands().contains(&build),
        "the README's \"Build and deploy\" section shows the Dockerfile's release build `{build}`"
    );
    let readme = read("README.md");
    let top = &readme[..readme.find("\n## ").expect("the README has sections")];
    assert!(
        !top.contains(&build),
        "the build command stays out of the README's two set-up commands at the top"
    );

    // The builder: Rust of at least the workspace's rust-version, clang for bindgen.
    let root: toml::Table = toml_table("Cargo.toml");
    let rust_version = root["workspace"]["package"]["rust-version"]
        .as_str()
        .expect("rust-version");
    let arg = ins
        .iter()
        .find(|i| i.stage == 0 && i.keyword == "ARG" && i.args.starts_with("RUST_VERSION="))
        .expect("ARG RUST_VERSION before the first FROM");
    let version = |v: &str| -> (u32, u32) {
        let mut parts = v
            .split('.')
            .map(|p| p.parse::<u32>().expect("a version number"));
        (parts.next().expect("major"), parts.next().unwrap_or(0))
    };
    assert!(
        version(&arg.args["RUST_VERSION=".len()..]) >= version(rust_version),
        "the builder's Rust is at least rust-version {rust_version}"
    );
    let stages = ins.iter().map(|i| i.stage).max().expect("instructions");
    assert!(stages >= 2, "a multi-stage build");
    let from = |stage| {
        ins.iter()
            .find(|i| i.stage == stage && i.keyword == "FROM")
            .expect("a FROM")
            .args
            .as_str()
    };
    assert!(
        from(1).starts_with("rust:${RUST_VERSION}-bookworm"),
        "{}",
        from(1)
    );
    assert!(
        ins.iter().any(|i| i.stage == 1
            && i.keyword == "RUN"
            && i.args.contains("apt-get install")
            && i.args.contains(" clang ")
            && i.args.contains("libclang-dev")),
        "the builder installs clang and libclang-dev"
    );
    // Every workspace member's manifest is in the dependency layer.
    let copies: Vec<&str> = ins
        .iter()
        .filter(|i| i.stage == 1 && i.keyword == "COPY")
        .map(|i| i.args.as_str())
        .collect();
    assert!(copies.contains(&"Cargo.toml Cargo.lock ./"));
    for member in root["workspace"]["members"].as_array().expect("members") {
        let member = member.as_str().expect("a path");
        if member != "." {
            let line = format!("{member}/Cargo.toml {member}/");
            assert!(
                copies.contains(&line.as_str()),
                "the builder copies {member}/Cargo.toml"
            );
        }
    }

    // The runtime: distroless, non-root, the three ports, the volume, the configuration.
    let last: Vec<&Instruction> = ins.iter().filter(|i| i.stage == stages).collect();
    assert!(
        from(stages).starts_with("gcr.io/distroless/cc-debian12:nonroot"),
        "{}",
        from(stages)
    );
    let user = last
        .iter()
        .rev()
        .find(|i| i.keyword == "USER")
        .expect("the final stage names its USER");
    assert_eq!(
        user.args,
        format!("{UID}:{UID}"),
        "a numeric non-root user (runAsNonRoot can check it)"
    );
    let image = toml_table(IMAGE_CONFIG);
    let listen = Listeners::of(&image, IMAGE_CONFIG);
    let exposed: BTreeSet<i64> = last
        .iter()
        .filter(|i| i.keyword == "EXPOSE")
        .flat_map(|i| i.args.split_whitespace())
        .map(|p| p.parse().expect("a port number"))
        .collect();
    assert_eq!(
        exposed,
        listen.ports(),
        "EXPOSE names the image configuration's ports"
    );
    let json = |keyword: &str| -> Vec<String> {
        let i = last
            .iter()
            .find(|i| i.keyword == keyword)
            .unwrap_or_else(|| panic!("the final stage has {keyword}"));
        serde_json::from_str(&i.args).unwrap_or_else(|e| panic!("{keyword} in JSON form: {e}"))
    };
    let volume = json("VOLUME");
    assert_eq!(volume.len(), 1);
    let data_dir = toml_str(&image, "data_dir", IMAGE_CONFIG);
    assert!(
        Path::new(data_dir).starts_with(&volume[0]),
        "data_dir {data_dir} is in the VOLUME {}",
        volume[0]
    );
    assert_eq!(json("ENTRYPOINT"), ["/usr/local/bin/writ"]);
    let cmd = json("CMD");
    assert_eq!(cmd[..2], ["serve", "--config"]);
    assert_eq!(
        copies_to(&last, IMAGE_CONFIG),
        Some(cmd[2].as_str()),
        "the image's configuration is {IMAGE_CONFIG}"
    );
    assert!(
        last.iter().any(|i| i.keyword == "COPY"
            && i.args
                .starts_with(&format!("--from=builder --chown={UID}:{UID} "))
            && i.args.ends_with(&format!(" {}", volume[0]))),
        "the volume's root belongs to the server's user"
    );
    server_config(&read(IMAGE_CONFIG), IMAGE_CONFIG);

    // Nothing built and nothing secret goes into the build context.
    let ignored: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    for pattern in [".git", "**/target", "**/writ-data", "**/server-keys.toml"] {
        assert!(
            ignored.iter().any(|l| l == pattern),
            ".dockerignore has {pattern}"
        );
    }
}

/// Where the final stage copies the build context's `src`, if it does.
fn copies_to<'a>(stage: &[&'a Instruction], src: &str) -> Option<&'a str> {
    stage.iter().find_map(|i| {
        let (from, to) = i.args.split_once(' ')?;
        (i.keyword == "COPY" && from == src).then_some(to)
    })
}

// ---------------------------------------------------------------------------------------
// systemd

#[test]
fn the_systemd_unit_is_hardened() {
    let mut section = String::new();
    let mut service: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in read("deploy/writ.service").lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('[') {
            section = line.to_owned();
        } else if section == "[Service]" {
            let (k, v) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("writ.service: {line:?}"));
            service.entry(k.to_owned()).or_default().push(v.to_owned());
        }
    }
    let one = |key: &str| -> &str {
        match service.get(key).map(Vec::as_slice) {
            Some([v]) => v,
            other => panic!("writ.service: {key} once, not {other:?}"),
        }
    };
    for (key, value) in [
        ("DynamicUser", "yes"),
        ("StateDirectory", "writ"),
        ("StateDirectoryMode", "0700"),
        ("UMask", "0077"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("SystemCallArchitectures", "native"),
        ("MemoryDenyWriteExecute", "yes"),
        ("LimitCORE", "0"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("Restart", "on-failure"),
    ] {
        assert_eq!(one(key), value, "writ.service: {key}");
    }
    assert_eq!(
        service["SystemCallFilter"],
        ["@system-service", "~@privileged @resources"]
    );
    let files: u64 = one("LimitNOFILE").parse().expect("LimitNOFILE is a number");
    assert!(
        files >= 4096,
        "room for 1024 connections and RocksDB's files"
    );
    assert!(
        one("ExecStart").ends_with(&format!("--data-dir /var/lib/{}", one("StateDirectory"))),
        "the data directory is the state directory systemd creates for the service's user"
    );
}
