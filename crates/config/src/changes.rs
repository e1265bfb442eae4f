//! What a reload changes, said for the operator (`config_loaded`'s `changes`, printed by
//! `supervisor reload`).

use crate::Config;

impl Config {
    /// What changes from this config to `new`, one line each, for the operator: groups
    /// added and removed, pools resized, and each other setting that differs.
    pub fn changes_to(&self, new: &Config) -> Vec<String> {
        let mut out = Vec::new();
        for g in &new.groups {
            match self.group(&g.name) {
                None => out.push(format!(
                    "group {}: added ({} workers)",
                    g.name, g.max_workers
                )),
                Some(old) => {
                    if old.max_workers != g.max_workers {
                        out.push(format!(
                            "group {}: max_workers {} -> {}",
                            g.name, old.max_workers, g.max_workers
                        ));
                    }
                    let mut rest = old.clone();
                    rest.max_workers = g.max_workers;
                    if rest != *g {
                        out.push(format!("group {}: settings changed", g.name));
                    }
                }
            }
        }
        for g in &self.groups {
            if new.group(&g.name).is_none() {
                out.push(format!(
                    "group {}: removed (its workers finish their jobs)",
                    g.name
                ));
            }
        }
        let old_order: Vec<&str> = self.groups.iter().map(|g| g.name.as_str()).collect();
        let new_order: Vec<&str> = new.groups.iter().map(|g| g.name.as_str()).collect();
        let kept = |order: &[&'_ str], other: &Config| -> Vec<String> {
            order
                .iter()
                .filter(|n| other.group(n).is_some())
                .map(|n| n.to_string())
                .collect()
        };
        if kept(&old_order, new) != kept(&new_order, self) {
            out.push("group order (routing) changed".into());
        }
        let mut setting = |name: &str, differs: bool| {
            if differs {
                out.push(format!("{name} changed"));
            }
        };
        setting("grabber", self.grabber != new.grabber);
        setting("heartbeat", self.heartbeat != new.heartbeat);
        setting(
            "shutdown_grace_s",
            self.shutdown_grace != new.shutdown_grace,
        );
        setting("events", self.events != new.events);
        setting("retention", self.retention != new.retention);
        setting("instances", self.instances != new.instances);
        if self.http != new.http {
            out.push("http changed (it takes effect at the next start)".into());
        }
        out
    }
}
