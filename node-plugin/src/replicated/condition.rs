//! A replicated volume's health, from what its engine reports: abnormal when the engine has
//! failed (fenced by a newer one, or every replica lost), or when fewer replicas than
//! configured hold all of its data (some away, some being rebuilt).

use warren_core::storage::Condition;
use warren_replica::engine::EngineStatus;

/// `configured`: the volume's replicas (node names) as its engine was started with.
pub fn condition(status: &EngineStatus, configured: &[String]) -> Condition {
    if let Some(why) = &status.failed {
        return Condition::abnormal(format!("the volume's engine has failed: {why}"));
    }
    let rebuilding: Vec<&str> = configured
        .iter()
        .filter(|r| status.rebuilding.contains(r))
        .map(String::as_str)
        .collect();
    let missing: Vec<&str> = configured
        .iter()
        .filter(|r| !status.members.contains(r) && !status.rebuilding.contains(r))
        .map(String::as_str)
        .collect();
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!("missing: {}", missing.join(", ")));
    }
    if !rebuilding.is_empty() {
        parts.push(format!("rebuilding: {}", rebuilding.join(", ")));
    }
    if parts.is_empty() {
        return Condition::healthy();
    }
    Condition::abnormal(format!(
        "{} of {} replicas in sync ({})",
        status.members.len(),
        configured.len(),
        parts.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(members: &[&str], rebuilding: &[&str], failed: Option<&str>) -> EngineStatus {
        EngineStatus {
            gen: 3,
            members: members.iter().map(|s| s.to_string()).collect(),
            rebuilding: rebuilding.iter().map(|s| s.to_string()).collect(),
            failed: failed.map(str::to_string),
            last_rebuild: None,
            rebuilds: vec![],
        }
    }

    #[test]
    fn healthy_only_with_every_replica_in_sync() {
        let abc: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        assert_eq!(
            condition(&status(&["a", "b", "c"], &[], None), &abc),
            Condition::healthy()
        );
        let c = condition(&status(&["a"], &["b"], None), &abc);
        assert!(c.abnormal);
        assert_eq!(
            c.message,
            "1 of 3 replicas in sync (missing: c; rebuilding: b)"
        );
        let c = condition(
            &status(&["a", "b", "c"], &[], Some("fenced by a newer engine")),
            &abc,
        );
        assert!(c.abnormal && c.message.contains("fenced"), "{}", c.message);
    }
}
