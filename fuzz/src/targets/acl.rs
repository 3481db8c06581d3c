//! ACL files (`Acl::parse`): never panics, and what a parsed ACL gives a caller on a
//! repository is exactly the union of the rules naming the caller whose pattern matches,
//! with `${user}` standing for the caller's name literally (checked against a backtracking
//! glob matcher over the same TOML read independently).

use berth::auth::Action;
use berth::auth::acl::{Acl, Actions};
use serde::Deserialize;

use crate::{input, reference};

#[derive(Deserialize)]
struct File {
    #[serde(default)]
    rule: Vec<Rule>,
}

#[derive(Deserialize)]
struct Rule {
    repository: Option<String>,
    #[serde(default)]
    catalog: bool,
    users: Vec<String>,
    #[serde(default)]
    actions: Vec<String>,
}

fn names(rule: &Rule, user: Option<&str>) -> bool {
    rule.users.iter().any(|u| match (u.as_str(), user) {
        ("anonymous", None) => true,
        ("*", Some(_)) => true,
        (name, Some(user)) => name != "anonymous" && name != "*" && name == user,
        _ => false,
    })
}

pub fn run(data: &[u8]) {
    let parts = input::split(data, 3);
    let Some(text) = input::text(&parts, 0) else {
        return;
    };
    let Ok(acl) = Acl::parse(text) else {
        return;
    };
    let file: File = toml::from_str(text).expect("Berth accepted it; so does a plain reading");
    // Part 1: the user (empty: anonymous); part 2: the repository.
    let user = input::text(&parts, 1).filter(|u| !u.is_empty());
    let repository = input::text(&parts, 2).unwrap_or("");

    let mut expected = Actions::NONE;
    for rule in &file.rule {
        let Some(pattern) = &rule.repository else {
            continue;
        };
        if !names(rule, user) {
            continue;
        }
        let matched = if pattern.contains("${user}") {
            user.is_some_and(|u| reference::glob(pattern, Some(u), repository))
        } else {
            reference::glob(pattern, None, repository)
        };
        if matched {
            for action in &rule.actions {
                match action.as_str() {
                    "*" => expected = Actions::ALL,
                    other => expected.insert(Action::parse(other).expect("a valid action")),
                }
            }
        }
    }
    let actions = acl.actions(user, repository);
    assert_eq!(actions, expected, "user {user:?} on {repository:?}");
    let catalog = file.rule.iter().any(|r| r.catalog && names(r, user));
    assert_eq!(acl.catalog(user), catalog, "catalog for {user:?}");
    let anonymous = file.rule.iter().any(|r| names(r, None));
    assert_eq!(acl.allows_anonymous(), anonymous);
}
