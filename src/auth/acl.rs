//! Access control lists: which users may do what on which repositories.
//!
//! A TOML file of rules; a caller's permissions are the union of every rule naming it:
//!
//! ```toml
//! # Anyone, signed in or not, may pull public images.
//! [[rule]]
//! repository = "public/**"
//! users = ["anonymous", "*"]
//! actions = ["pull"]
//!
//! # Every user owns the repositories under their name.
//! [[rule]]
//! repository = "${user}/**"
//! users = ["*"]
//! actions = ["*"]
//!
//! # Only admins list the catalog (and see only what they may pull).
//! [[rule]]
//! catalog = true
//! users = ["admin"]
//! ```
//!
//! `repository` is a glob: `*` matches within one path segment, `**` across segments, `?` one
//! character, and `${user}` stands for the caller's user name. In `users`, `anonymous` is a
//! caller without credentials and `*` any signed-in user. `actions` are `pull`, `push`,
//! `delete`, or `*` for all three.

use std::path::Path;

use serde::Deserialize;

use super::scope::Action;
use crate::glob::{glob_match, glob_match_user};

/// Why an ACL file was refused.
#[derive(Debug, thiserror::Error)]
pub enum AclError {
    /// The file cannot be read.
    #[error("reading ACL file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid ACL.
    #[error("ACL file {path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AclFile {
    #[serde(default)]
    rule: Vec<RuleFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    repository: Option<String>,
    #[serde(default)]
    catalog: bool,
    users: Vec<String>,
    #[serde(default)]
    actions: Vec<String>,
}

/// Who a rule is for.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Who {
    Anonymous,
    AnyUser,
    User(String),
}

#[derive(Clone, Debug)]
struct Rule {
    pattern: Option<String>,
    catalog: bool,
    users: Vec<Who>,
    actions: Vec<Action>,
}

/// A set of actions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Actions(u8);

impl Actions {
    /// No action.
    pub const NONE: Actions = Actions(0);
    /// Every action.
    pub const ALL: Actions = Actions(0b111);

    fn bit(action: Action) -> u8 {
        match action {
            Action::Pull => 1,
            Action::Push => 2,
            Action::Delete => 4,
        }
    }

    /// Adds an action.
    pub fn insert(&mut self, action: Action) {
        self.0 |= Self::bit(action);
    }

    /// Whether the set holds `action`.
    pub fn contains(self, action: Action) -> bool {
        self.0 & Self::bit(action) != 0
    }

    /// The actions in the set.
    pub fn iter(self) -> impl Iterator<Item = Action> {
        Action::ALL.into_iter().filter(move |a| self.contains(*a))
    }
}

/// A list of access rules.
#[derive(Clone, Debug)]
pub struct Acl {
    rules: Vec<Rule>,
}

impl Acl {
    /// Every signed-in user may do everything (the default without an ACL file); anonymous
    /// callers may do nothing.
    pub fn authenticated_users_may_do_everything() -> Acl {
        Acl {
            rules: vec![
                Rule {
                    pattern: Some("**".to_owned()),
                    catalog: false,
                    users: vec![Who::AnyUser],
                    actions: Action::ALL.to_vec(),
                },
                Rule {
                    pattern: None,
                    catalog: true,
                    users: vec![Who::AnyUser],
                    actions: Vec::new(),
                },
            ],
        }
    }

    /// Reads an ACL file.
    pub fn load(path: &Path) -> Result<Acl, AclError> {
        let text = std::fs::read_to_string(path).map_err(|source| AclError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Acl::parse(&text).map_err(|message| AclError::Invalid {
            path: path.display().to_string(),
            message,
        })
    }

    /// Parses ACL rules from TOML.
    pub fn parse(text: &str) -> Result<Acl, String> {
        let file: AclFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut rules = Vec::new();
        for (i, r) in file.rule.into_iter().enumerate() {
            let n = i + 1;
            match (&r.repository, r.catalog) {
                (Some(_), true) => {
                    return Err(format!(
                        "rule {n}: a rule is either about a repository pattern or the catalog, not both"
                    ));
                }
                (None, false) => {
                    return Err(format!(
                        "rule {n}: give a repository pattern, or catalog = true"
                    ));
                }
                _ => {}
            }
            if let Some(pattern) = &r.repository
                && (pattern.is_empty() || pattern.contains("//"))
            {
                return Err(format!(
                    "rule {n}: repository pattern {pattern:?} is empty or has an empty segment"
                ));
            }
            if r.users.is_empty() {
                return Err(format!(
                    "rule {n}: users is empty; list user names, \"*\" (any signed-in user) or \"anonymous\""
                ));
            }
            let users = r
                .users
                .iter()
                .map(|u| match u.as_str() {
                    "anonymous" => Who::Anonymous,
                    "*" => Who::AnyUser,
                    name => Who::User(name.to_owned()),
                })
                .collect();
            let mut actions = Vec::new();
            for a in &r.actions {
                match a.as_str() {
                    "*" => actions.extend(Action::ALL),
                    other => actions.push(Action::parse(other).ok_or_else(|| {
                        format!("rule {n}: unknown action {other:?}; use pull, push, delete or *")
                    })?),
                }
            }
            if r.repository.is_some() && actions.is_empty() {
                return Err(format!("rule {n}: actions is empty"));
            }
            rules.push(Rule {
                pattern: r.repository,
                catalog: r.catalog,
                users,
                actions,
            });
        }
        Ok(Acl { rules })
    }

    fn applies(rule: &Rule, user: Option<&str>) -> bool {
        rule.users.iter().any(|who| match (who, user) {
            (Who::Anonymous, None) => true,
            (Who::AnyUser, Some(_)) => true,
            (Who::User(name), Some(u)) => name == u,
            _ => false,
        })
    }

    /// What `user` (`None`: anonymous) may do on `repository`.
    pub fn actions(&self, user: Option<&str>, repository: &str) -> Actions {
        let mut allowed = Actions::NONE;
        for rule in &self.rules {
            let Some(pattern) = &rule.pattern else {
                continue;
            };
            if !Self::applies(rule, user) {
                continue;
            }
            let matched = if pattern.contains("${user}") {
                match user {
                    Some(u) => glob_match_user(pattern, u, repository),
                    None => false,
                }
            } else {
                glob_match(pattern, repository)
            };
            if matched {
                for a in &rule.actions {
                    allowed.insert(*a);
                }
            }
        }
        allowed
    }

    /// Whether `user` may list the catalog.
    pub fn catalog(&self, user: Option<&str>) -> bool {
        self.rules
            .iter()
            .any(|r| r.catalog && Self::applies(r, user))
    }

    /// Whether any rule gives anonymous callers anything.
    pub fn allows_anonymous(&self) -> bool {
        self.rules.iter().any(|r| Self::applies(r, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_within_and_across_segments() {
        assert!(glob_match("library/*", "library/ubuntu"));
        assert!(!glob_match("library/*", "library/a/b"));
        assert!(glob_match("library/**", "library/a/b"));
        assert!(glob_match("**", "anything/at/all"));
        assert!(glob_match("team-?/app", "team-a/app"));
        assert!(!glob_match("team-?/app", "team-ab/app"));
        assert!(glob_match("*/app", "x/app"));
        assert!(!glob_match("*/app", "x/y/app"));
        assert!(glob_match("**/app", "x/y/app"));
        assert!(glob_match("exact/name", "exact/name"));
        assert!(!glob_match("exact/name", "exact/names"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axx/byyc"));
        assert!(
            glob_match("**/a*", "x/a/b/ab"),
            "a late single star does not undo **"
        );
        assert!(!glob_match("**/a*", "x/a/b/b"));
        assert!(glob_match("a/**", "a/"), "** matches nothing too");
        assert!(!glob_match("", "a"));
    }

    #[test]
    fn rules_unite_per_user() {
        let acl = Acl::parse(
            r#"
            [[rule]]
            repository = "public/**"
            users = ["anonymous", "*"]
            actions = ["pull"]

            [[rule]]
            repository = "${user}/**"
            users = ["*"]
            actions = ["*"]

            [[rule]]
            repository = "team/*"
            users = ["alice"]
            actions = ["pull", "push"]

            [[rule]]
            catalog = true
            users = ["admin"]
            "#,
        )
        .unwrap();
        assert_eq!(
            acl.actions(None, "public/x/y").iter().collect::<Vec<_>>(),
            vec![Action::Pull]
        );
        assert_eq!(acl.actions(None, "alice/app"), Actions::NONE);
        assert_eq!(acl.actions(Some("alice"), "alice/app"), Actions::ALL);
        assert_eq!(acl.actions(Some("bob"), "alice/app"), Actions::NONE);
        let team = acl.actions(Some("alice"), "team/app");
        assert!(team.contains(Action::Push) && !team.contains(Action::Delete));
        assert!(acl.catalog(Some("admin")));
        assert!(!acl.catalog(Some("alice")));
        assert!(!acl.catalog(None));
        assert!(acl.allows_anonymous());
    }

    #[test]
    fn malformed_rules_are_refused_with_their_number() {
        for (text, says) in [
            ("[[rule]]\nusers = [\"a\"]\nactions = [\"pull\"]", "rule 1"),
            (
                "[[rule]]\nrepository = \"x\"\nusers = []\nactions = [\"pull\"]",
                "users is empty",
            ),
            (
                "[[rule]]\nrepository = \"x\"\nusers = [\"a\"]\nactions = [\"fly\"]",
                "unknown action",
            ),
            (
                "[[rule]]\nrepository = \"x\"\ncatalog = true\nusers = [\"a\"]",
                "not both",
            ),
            ("[[rule]]\nrepo = \"x\"\nusers = [\"a\"]", "unknown field"),
        ] {
            let err = Acl::parse(text).unwrap_err();
            assert!(err.contains(says), "{text:?}: {err}");
        }
    }

    /// Found by the `acl` fuzz target (fuzz/; input `corpus/acl/regression-acl-user-glob`):
    /// `${user}` was substituted into the pattern before matching, so a user named `*` owned
    /// every repository of two or more segments.
    #[test]
    fn user_names_with_glob_characters_match_only_themselves() {
        let acl = Acl::parse(
            "[[rule]]\nrepository = \"${user}/**\"\nusers = [\"*\"]\nactions = [\"*\"]\n",
        )
        .unwrap();
        assert_eq!(acl.actions(Some("*"), "x/y"), Actions::NONE);
        assert_eq!(acl.actions(Some("a*"), "ab/c"), Actions::NONE);
        assert_eq!(acl.actions(Some("?"), "a/b"), Actions::NONE);
        assert_eq!(acl.actions(Some("a*"), "a*/c"), Actions::ALL);
        assert_eq!(acl.actions(Some("alice"), "alice/app"), Actions::ALL);
        assert_eq!(acl.actions(Some("alice"), "alicex/app"), Actions::NONE);
    }

    #[test]
    fn the_default_lets_signed_in_users_do_everything() {
        let acl = Acl::authenticated_users_may_do_everything();
        assert_eq!(acl.actions(Some("u"), "any/repo"), Actions::ALL);
        assert_eq!(acl.actions(None, "any/repo"), Actions::NONE);
        assert!(acl.catalog(Some("u")));
        assert!(!acl.catalog(None));
    }
}
