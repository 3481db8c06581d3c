//! Accesses and the token scope grammar: `repository:<name>:<action>[,<action>…]` and
//! `registry:catalog:*`.

use std::fmt;

/// An action on a repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// Read manifests, tags, blobs and referrers.
    Pull,
    /// Upload blobs and push manifests.
    Push,
    /// Delete manifests, tags and blobs.
    Delete,
}

impl Action {
    /// Every action.
    pub const ALL: [Action; 3] = [Action::Pull, Action::Push, Action::Delete];

    /// The action's name in scopes and ACLs.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }

    /// Parses an action name.
    pub fn parse(name: &str) -> Option<Action> {
        match name {
            "pull" => Some(Action::Pull),
            "push" => Some(Action::Push),
            "delete" => Some(Action::Delete),
            _ => None,
        }
    }
}

/// What an access is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Resource {
    /// A repository, by name.
    Repository(String),
    /// The list of all repositories (`registry:catalog:*`).
    Catalog,
}

/// One access an operation needs: an action on a repository, or the catalog.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Access {
    /// What it is about.
    pub resource: Resource,
    /// The action on a repository; `None` for the catalog.
    pub action: Option<Action>,
}

impl Access {
    /// `action` on the repository `name`.
    pub fn repository(name: &str, action: Action) -> Access {
        Access {
            resource: Resource::Repository(name.to_owned()),
            action: Some(action),
        }
    }

    /// Listing the catalog.
    pub fn catalog() -> Access {
        Access {
            resource: Resource::Catalog,
            action: None,
        }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.resource, self.action) {
            (Resource::Repository(name), Some(action)) => {
                write!(f, "repository:{name}:{}", action.as_str())
            }
            (Resource::Repository(name), None) => write!(f, "repository:{name}:"),
            (Resource::Catalog, _) => f.write_str("registry:catalog:*"),
        }
    }
}

/// One resource scope of a token request or challenge: a resource and the actions on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScopeEntry {
    /// The resource type (`repository`, `registry`).
    pub kind: String,
    /// The resource name.
    pub name: String,
    /// The actions (`pull`, `push`, `delete`, `*`).
    pub actions: Vec<String>,
}

impl ScopeEntry {
    /// Parses `type:name:actions`. The name may hold one `:` (a registry host's port), so the
    /// type ends at the first `:` and the actions start after the last.
    pub fn parse(scope: &str) -> Option<ScopeEntry> {
        let (kind, rest) = scope.split_once(':')?;
        let (name, actions) = rest.rsplit_once(':')?;
        // `repository(plugin)` is the same as `repository`: the class is deprecated.
        let kind = kind.split('(').next().unwrap_or(kind);
        if kind.is_empty()
            || !kind
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            || name.is_empty()
        {
            return None;
        }
        Some(ScopeEntry {
            kind: kind.to_owned(),
            name: name.to_owned(),
            actions: actions
                .split(',')
                .filter(|a| !a.is_empty())
                .map(str::to_owned)
                .collect(),
        })
    }

    /// Parses a space-separated scope list (the OAuth2 form); entries that do not parse are
    /// skipped.
    pub fn parse_list(scopes: &str) -> Vec<ScopeEntry> {
        scopes.split(' ').filter_map(ScopeEntry::parse).collect()
    }

    /// The accesses this entry asks for (unknown types and actions ask for nothing).
    pub fn accesses(&self) -> Vec<Access> {
        match self.kind.as_str() {
            "repository" => self
                .actions
                .iter()
                .flat_map(|a| match a.as_str() {
                    "*" => Action::ALL.to_vec(),
                    other => Action::parse(other).into_iter().collect(),
                })
                .map(|action| Access::repository(&self.name, action))
                .collect(),
            "registry" if self.name == "catalog" && self.actions.iter().any(|a| a == "*") => {
                vec![Access::catalog()]
            }
            _ => Vec::new(),
        }
    }
}

impl fmt::Display for ScopeEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.kind, self.name, self.actions.join(","))
    }
}

/// The scope string of a challenge for `needs`: one entry per resource, actions joined.
pub fn challenge_scope(needs: &[Access]) -> String {
    let mut entries: Vec<ScopeEntry> = Vec::new();
    for access in needs {
        let (kind, name, action) = match (&access.resource, access.action) {
            (Resource::Repository(name), Some(action)) => {
                ("repository", name.as_str(), action.as_str())
            }
            (Resource::Repository(_), None) => continue,
            (Resource::Catalog, _) => ("registry", "catalog", "*"),
        };
        match entries
            .iter_mut()
            .find(|e| e.kind == kind && e.name == name)
        {
            Some(entry) => {
                if !entry.actions.iter().any(|a| a == action) {
                    entry.actions.push(action.to_owned());
                }
            }
            None => entries.push(ScopeEntry {
                kind: kind.to_owned(),
                name: name.to_owned(),
                actions: vec![action.to_owned()],
            }),
        }
    }
    entries
        .iter()
        .map(ScopeEntry::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_with_ports_and_plugin_classes() {
        let s = ScopeEntry::parse("repository:samalba/my-app:pull,push").unwrap();
        assert_eq!(s.kind, "repository");
        assert_eq!(s.name, "samalba/my-app");
        assert_eq!(s.actions, vec!["pull", "push"]);
        let s = ScopeEntry::parse("repository:localhost:5000/app:pull").unwrap();
        assert_eq!(s.name, "localhost:5000/app");
        assert_eq!(s.actions, vec!["pull"]);
        let s = ScopeEntry::parse("repository(plugin):a/b:pull").unwrap();
        assert_eq!(s.kind, "repository");
        assert_eq!(
            ScopeEntry::parse("registry:catalog:*").unwrap().accesses(),
            vec![Access::catalog()]
        );
        assert_eq!(
            ScopeEntry::parse("repository:a:*")
                .unwrap()
                .accesses()
                .len(),
            3
        );
        for bad in [
            "",
            "repository",
            "repository:",
            "Repo:a:pull",
            "repository::pull",
        ] {
            assert!(ScopeEntry::parse(bad).is_none(), "{bad:?}");
        }
        assert_eq!(
            ScopeEntry::parse_list("repository:a:pull registry:catalog:*").len(),
            2
        );
    }

    #[test]
    fn challenges_join_actions_per_repository() {
        let needs = [
            Access::repository("a/b", Action::Pull),
            Access::repository("a/b", Action::Push),
            Access::repository("c", Action::Pull),
            Access::catalog(),
        ];
        assert_eq!(
            challenge_scope(&needs),
            "repository:a/b:pull,push repository:c:pull registry:catalog:*"
        );
    }
}
