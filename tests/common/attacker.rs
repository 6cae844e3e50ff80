//! The attacker fixture the security suites share: the policy that
//! confines `mallory` to `sandbox/mallory/**` (and lets her pull
//! `bpf/**`), with `alice` owning `bpf/**`, `admin` everything and
//! anonymous callers `public/**`; the users' passwords, and the htpasswd
//! writer.

use std::path::Path;

pub const ATTACKER_POLICY: &str = r#"
[[grant]]
users = ["mallory"]
repositories = ["sandbox/mallory/**"]
actions = ["pull", "push", "delete"]

[[grant]]
users = ["mallory"]
repositories = ["bpf/**"]
actions = ["pull"]

[[grant]]
users = ["alice"]
repositories = ["bpf/**"]
actions = ["pull", "push", "delete"]

[[grant]]
users = ["admin"]
repositories = ["**"]
actions = ["*"]

[anonymous]
repositories = ["public/**"]
actions = ["pull"]
"#;

pub const ATTACKER_USERS: [&str; 3] = ["mallory", "alice", "admin"];

/// The password of a fixture user.
pub fn password(user: &str) -> String {
    format!("{user}-Pa55word")
}

/// An htpasswd file of `users` (bcrypt at `cost`, in the `$2y$` form
/// Apache's htpasswd writes).
pub fn write_htpasswd(path: &Path, users: &[&str], cost: u32) {
    let mut text = String::from("# test users\n");
    for u in users {
        let h = bcrypt::hash(password(u), cost).expect("bcrypt");
        text.push_str(&format!("{u}:{}\n", h.replacen("$2b$", "$2y$", 1)));
    }
    std::fs::write(path, text).expect("write htpasswd");
}
