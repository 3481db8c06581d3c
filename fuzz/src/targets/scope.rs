//! Token scopes (`ScopeEntry::parse`, `parse_list`, `accesses`, `challenge_scope`): an entry
//! prints as a scope that parses back to it, and the challenge scope of valid repository
//! accesses parses back to the same accesses.

use std::collections::BTreeSet;

use berth::auth::scope::{ScopeEntry, challenge_scope};
use berth::auth::{Access, Action, Resource};
use berth::oci::RepositoryName;

fn key(access: &Access) -> (String, Option<Action>) {
    match &access.resource {
        Resource::Repository(name) => (format!("repository:{name}"), access.action),
        Resource::Catalog => ("registry:catalog".to_owned(), None),
    }
}

pub fn run(data: &[u8]) {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(entry) = ScopeEntry::parse(input) {
        assert!(!entry.kind.is_empty() && !entry.name.is_empty());
        assert!(
            entry
                .actions
                .iter()
                .all(|a| !a.is_empty() && !a.contains([',', ':']))
        );
        let printed = entry.to_string();
        assert_eq!(
            ScopeEntry::parse(&printed).as_ref(),
            Some(&entry),
            "{printed:?}"
        );
        for access in entry.accesses() {
            match &access.resource {
                Resource::Repository(name) => {
                    assert_eq!(entry.kind, "repository");
                    assert_eq!(name, &entry.name);
                    assert!(access.action.is_some());
                }
                Resource::Catalog => {
                    assert_eq!(
                        (entry.kind.as_str(), entry.name.as_str()),
                        ("registry", "catalog")
                    )
                }
            }
        }
    }

    let entries = ScopeEntry::parse_list(input);
    assert!(entries.len() <= input.split(' ').count());
    let needs: Vec<Access> = entries
        .iter()
        .flat_map(ScopeEntry::accesses)
        .filter(|a| match &a.resource {
            Resource::Repository(name) => RepositoryName::parse(name).is_ok(),
            Resource::Catalog => true,
        })
        .collect();
    let challenge = challenge_scope(&needs);
    let back: BTreeSet<_> = ScopeEntry::parse_list(&challenge)
        .iter()
        .flat_map(ScopeEntry::accesses)
        .map(|a| key(&a))
        .collect();
    let wanted: BTreeSet<_> = needs.iter().map(key).collect();
    assert_eq!(back, wanted, "{input:?} -> {challenge:?}");
}
