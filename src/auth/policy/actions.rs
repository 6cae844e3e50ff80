//! The actions a policy grants: [`Action`]s on repositories and
//! [`HostAction`]s on fleet hosts, each with its set type.

use std::fmt;

/// One of the three things a caller can do to a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Pull,
    Push,
    Delete,
}

impl Action {
    pub const ALL: [Action; 3] = [Action::Pull, Action::Push, Action::Delete];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "pull" => Some(Action::Pull),
            "push" => Some(Action::Push),
            "delete" => Some(Action::Delete),
            _ => None,
        }
    }

    fn bit(self) -> u8 {
        match self {
            Action::Pull => 1,
            Action::Push => 2,
            Action::Delete => 4,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of actions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Actions(u8);

impl Actions {
    pub const NONE: Actions = Actions(0);
    pub const ALL: Actions = Actions(7);

    pub fn contains(self, a: Action) -> bool {
        self.0 & a.bit() != 0
    }

    pub fn with(self, a: Action) -> Actions {
        Actions(self.0 | a.bit())
    }

    pub fn union(self, o: Actions) -> Actions {
        Actions(self.0 | o.0)
    }

    pub fn intersect(self, o: Actions) -> Actions {
        Actions(self.0 & o.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// In the fixed order pull, push, delete.
    pub fn iter(self) -> impl Iterator<Item = Action> {
        Action::ALL.into_iter().filter(move |a| self.contains(*a))
    }

    /// `pull,push` (the scope syntax).
    pub fn to_scope_string(self) -> String {
        self.iter()
            .map(Action::as_str)
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl FromIterator<Action> for Actions {
    fn from_iter<I: IntoIterator<Item = Action>>(iter: I) -> Self {
        iter.into_iter().fold(Actions::NONE, Actions::with)
    }
}

/// One of the three things a caller can do to a fleet host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HostAction {
    /// Report the host's state and deployments (implies `Read`).
    Report,
    Read,
    Delete,
}

impl HostAction {
    pub const ALL: [HostAction; 3] = [HostAction::Report, HostAction::Read, HostAction::Delete];

    pub fn as_str(self) -> &'static str {
        match self {
            HostAction::Report => "report",
            HostAction::Read => "read",
            HostAction::Delete => "delete",
        }
    }

    pub fn parse(s: &str) -> Option<HostAction> {
        match s {
            "report" => Some(HostAction::Report),
            "read" => Some(HostAction::Read),
            "delete" => Some(HostAction::Delete),
            _ => None,
        }
    }

    fn bit(self) -> u8 {
        match self {
            HostAction::Report => 1,
            HostAction::Read => 2,
            HostAction::Delete => 4,
        }
    }
}

impl fmt::Display for HostAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of host actions; a set with `Report` always holds `Read`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct HostActions(u8);

impl HostActions {
    pub const NONE: HostActions = HostActions(0);
    pub const ALL: HostActions = HostActions(7);

    pub fn contains(self, a: HostAction) -> bool {
        self.0 & a.bit() != 0
    }

    /// Adds `a` (and `Read` with `Report`).
    pub fn with(self, a: HostAction) -> HostActions {
        let implied = match a {
            HostAction::Report => HostAction::Read.bit(),
            _ => 0,
        };
        HostActions(self.0 | a.bit() | implied)
    }

    pub fn union(self, o: HostActions) -> HostActions {
        HostActions(self.0 | o.0)
    }

    pub fn intersect(self, o: HostActions) -> HostActions {
        HostActions(self.0 & o.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// In the fixed order report, read, delete.
    pub fn iter(self) -> impl Iterator<Item = HostAction> {
        HostAction::ALL
            .into_iter()
            .filter(move |a| self.contains(*a))
    }
}

impl FromIterator<HostAction> for HostActions {
    fn from_iter<I: IntoIterator<Item = HostAction>>(iter: I) -> Self {
        iter.into_iter().fold(HostActions::NONE, HostActions::with)
    }
}
