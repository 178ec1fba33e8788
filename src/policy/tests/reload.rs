//! Hot reload on a real directory, including a ConfigMap-style `..data` symlink swap.

use std::path::Path;
use std::time::Duration;

use super::*;

const INTERVAL: Duration = Duration::from_millis(10);
const PATIENCE: Duration = Duration::from_secs(10);

/// A policy named `name` allowing everyone to get `resource`.
fn text(name: &str, resource: &str) -> String {
    format!(
        "apiVersion: chaperone.dev/v1alpha1\nkind: Policy\nmetadata:\n  name: {name}\nspec:\n  rules:\n  - name: r\n    subjects: {{users: [\"*\"]}}\n    apiGroups: [\"\"]\n    resources: [{resource}]\n    verbs: [get]\n    action: allow\n"
    )
}

/// Polls `done` until it holds, failing after `PATIENCE`.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let waited = tokio::time::timeout(PATIENCE, async {
        while !done() {
            tokio::time::sleep(INTERVAL).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting until {what}");
}

fn name(w: &Watched) -> Option<String> {
    w.current().map(|p| p.name().to_owned())
}

fn write(path: &Path, contents: &str) {
    // Write then rename, as editors and kubelet do, so a poll never sees half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

#[tokio::test]
async fn starts_without_a_file_and_picks_it_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("policy.yaml");
    let watched = Watched::open(&path);
    assert!(watched.current().is_none());
    let error = watched.last_error().expect("says why there is no policy");
    assert!(error.starts_with("failed to read policy file"), "{error}");
    let d = watched.authorize(&who("u", &[]), &res("get", "", "pods", "a", "p"), None);
    assert_eq!((d.action(), d.rule()), (Action::Deny, NO_POLICY));
    assert!(
        d.status().message.contains("no policy is loaded"),
        "{}",
        d.status().message
    );

    let task = watched.spawn(INTERVAL);
    write(&path, &text("first", "pods"));
    eventually("the policy appears", || {
        name(&watched).as_deref() == Some("first")
    })
    .await;
    assert_eq!(watched.last_error(), None);
    let d = watched.authorize(&who("u", &[]), &res("get", "", "pods", "a", "p"), None);
    assert_eq!(d.action(), Action::Allow);
    task.abort();
}

#[tokio::test]
async fn a_bad_edit_keeps_the_last_good_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("policy.yaml");
    write(&path, &text("good", "pods"));
    let watched = Watched::open(&path);
    assert_eq!(name(&watched).as_deref(), Some("good"));
    let task = watched.spawn(INTERVAL);

    write(
        &path,
        &text("bad", "pods").replace("verbs: [get]", "verbs: [gett]"),
    );
    eventually("the bad edit is reported", || watched.failures() == 1).await;
    let error = watched.last_error().expect("an error");
    assert!(
        error.contains("spec.rules[0].verbs[0]: unknown variant `gett`"),
        "{error}"
    );
    assert!(error.contains("keeping policy \"good\""), "{error}");
    assert_eq!(name(&watched).as_deref(), Some("good"));

    write(&path, &text("fixed", "pods"));
    eventually("the fix loads", || {
        name(&watched).as_deref() == Some("fixed")
    })
    .await;
    assert_eq!(
        (watched.last_error(), watched.failures(), watched.reloads()),
        (None, 1, 2)
    );

    // Deleting the file keeps the policy too, and says so.
    std::fs::remove_file(&path).expect("rm");
    eventually("the deletion is reported", || watched.failures() == 2).await;
    assert_eq!(name(&watched).as_deref(), Some("fixed"));
    task.abort();
}

#[tokio::test]
async fn follows_a_configmap_symlink_swap() {
    // The kubelet's layout: policy.yaml -> ..data/policy.yaml, ..data -> ..<timestamp>/.
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let version = |n: &str, contents: &str| {
        let d = root.join(n);
        std::fs::create_dir(&d).expect("mkdir");
        std::fs::write(d.join("policy.yaml"), contents).expect("write");
    };
    version("..v1", &text("v1", "pods"));
    std::os::unix::fs::symlink("..v1", root.join("..data")).expect("symlink");
    std::os::unix::fs::symlink("..data/policy.yaml", root.join("policy.yaml")).expect("symlink");
    let watched = Watched::open(root.join("policy.yaml"));
    assert_eq!(name(&watched).as_deref(), Some("v1"));
    let task = watched.spawn(INTERVAL);

    // Same size, and possibly the same mtime: only the symlink target tells them apart.
    version("..v2", &text("v2", "pods"));
    std::os::unix::fs::symlink("..v2", root.join("..data_tmp")).expect("symlink");
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).expect("swap");
    eventually("v2 is in force", || name(&watched).as_deref() == Some("v2")).await;
    let d = watched.authorize(&who("u", &[]), &res("get", "", "pods", "a", "p"), None);
    assert_eq!(d.action(), Action::Allow);
    std::fs::remove_dir_all(root.join("..v1")).expect("rm old version");
    assert_eq!(watched.reloads(), 2);
    task.abort();
}

#[tokio::test]
async fn the_poller_stops_with_the_last_clone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("policy.yaml");
    write(&path, &text("p", "pods"));
    let watched = Watched::open(&path);
    let task = watched.spawn(INTERVAL);
    drop(watched);
    let stopped = tokio::time::timeout(PATIENCE, task).await;
    assert!(stopped.is_ok(), "the poller outlived its Watched");
}

/// A request is decided and masked by the policy in force when it came, though a
/// reload puts another in force before it is decided: the rules that let it through
/// are the ones that mask its answer.
#[tokio::test]
async fn a_request_keeps_the_policy_it_came_under() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("policy.yaml");
    write(&path, &text("first", "pods"));
    let watched = Watched::open(&path);
    let policies = Policies::watched(watched.clone());
    let came = policies.in_force();
    // The next version allows configmaps and masks their `data.password`.
    let second = format!(
        "{}  masking:\n  - resources: [configmaps]\n    fields: [data.password]\n",
        text("second", "configmaps")
    );
    write(&path, &second);
    eventually("the new policy is in force", || {
        watched.check();
        name(&watched).as_deref() == Some("second")
    })
    .await;
    let get_cm = res("get", "", "configmaps", "a", "db");
    let target = crate::mask::Target::of(&get_cm);
    // Under the policy it came with: not allowed, and nothing of configmaps masked.
    let d = came.authorize(&who("u", &[]), &get_cm, None);
    assert_eq!(d.action(), Action::Deny);
    assert!(!came.masker().masks_a_field_of(&target));
    // A request that comes now gets both of the new one.
    let now = policies.in_force();
    assert_eq!(
        now.authorize(&who("u", &[]), &get_cm, None).action(),
        Action::Allow
    );
    assert!(now.masker().masks_a_field_of(&target));
}
