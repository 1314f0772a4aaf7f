//! [`Action`]s: what the supervisor can do, and undo.

use std::fmt;

/// What an action touches: its blast radius.
///
/// Kinds are ordered from the narrowest to the widest ([`ScopeKind`]): a feature, a tenant, a
/// dependency, the whole process.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// The whole process (a restart, the gate's level).
    Process,
    /// One dependency (its breaker, its fallback path).
    Dependency(String),
    /// One tenant (a quarantine).
    Tenant(String),
    /// One feature (disabling it).
    Feature(String),
}

impl Scope {
    /// The kind of this scope, without its target.
    pub fn kind(&self) -> ScopeKind {
        match self {
            Scope::Process => ScopeKind::Process,
            Scope::Dependency(_) => ScopeKind::Dependency,
            Scope::Tenant(_) => ScopeKind::Tenant,
            Scope::Feature(_) => ScopeKind::Feature,
        }
    }

    /// The target's name (`None` for [`Scope::Process`]).
    pub fn target(&self) -> Option<&str> {
        match self {
            Scope::Process => None,
            Scope::Dependency(n) | Scope::Tenant(n) | Scope::Feature(n) => Some(n),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.target() {
            None => f.write_str(self.kind().as_str()),
            Some(t) => write!(f, "{}:{t}", self.kind().as_str()),
        }
    }
}

/// The kind of a [`Scope`], ordered by breadth: `Feature < Tenant < Dependency < Process`.
///
/// A rule's [`max_scope`](super::RuleBuilder::max_scope) is a kind: an action whose scope is wider
/// is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScopeKind {
    /// One feature.
    Feature,
    /// One tenant.
    Tenant,
    /// One dependency.
    Dependency,
    /// The whole process.
    Process,
}

impl ScopeKind {
    /// `"feature"`, `"tenant"`, `"dependency"` or `"process"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ScopeKind::Feature => "feature",
            ScopeKind::Tenant => "tenant",
            ScopeKind::Dependency => "dependency",
            ScopeKind::Process => "process",
        }
    }
}

impl fmt::Display for ScopeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an action's `apply` or `undo` failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionError {
    message: String,
}

impl ActionError {
    /// An error saying `message`.
    pub fn new(message: impl Into<String>) -> Self {
        ActionError {
            message: message.into(),
        }
    }

    /// What went wrong.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ActionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ActionError {}

/// Something the supervisor can do, and undo.
///
/// Object safe (rules hold `Arc<dyn Action>`), synchronous and **never blocking**: the supervisor
/// calls `apply` and `undo` from its tick, so an action flips a handle (a breaker, a gate level, a
/// feature flag) and returns. An action that must wait for something (a drain, a remote call) should
/// start it and return; async actions with a timeout are not part of this trait yet.
pub trait Action: Send + Sync + fmt::Debug + 'static {
    /// The action's name in audit records and budgets (e.g. `"fallback.payments"`): applications are
    /// counted per name.
    fn name(&self) -> &str;

    /// What the action touches, checked against the rule's maximum scope before it is applied.
    fn scope(&self) -> Scope;

    /// Does it.
    ///
    /// # Errors
    ///
    /// The action could not be done; the attempt fails and counts towards the rule's attempts and
    /// the supervisor's containment.
    fn apply(&self) -> Result<(), ActionError>;

    /// Undoes it: called in reverse order when the rule is restored, or when a later action of the
    /// same attempt failed.
    ///
    /// # Errors
    ///
    /// The action could not be undone; the supervisor escalates.
    fn undo(&self) -> Result<(), ActionError>;
}

/// An [`Action`] from two closures; see [`action_fn`].
pub struct FnAction<A, U> {
    name: String,
    scope: Scope,
    apply: A,
    undo: U,
}

impl<A, U> fmt::Debug for FnAction<A, U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnAction")
            .field("name", &self.name)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl<A, U> Action for FnAction<A, U>
where
    A: Fn() -> Result<(), ActionError> + Send + Sync + 'static,
    U: Fn() -> Result<(), ActionError> + Send + Sync + 'static,
{
    fn name(&self) -> &str {
        &self.name
    }

    fn scope(&self) -> Scope {
        self.scope.clone()
    }

    fn apply(&self) -> Result<(), ActionError> {
        (self.apply)()
    }

    fn undo(&self) -> Result<(), ActionError> {
        (self.undo)()
    }
}

/// An [`Action`] named `name` touching `scope`, doing `apply` and undone by `undo` (both must
/// return at once).
///
/// ```
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use std::sync::Arc;
/// use palisade_heal::supervisor::{action_fn, Action, Scope};
///
/// let enabled = Arc::new(AtomicBool::new(true));
/// let (off, on) = (enabled.clone(), enabled.clone());
/// let disable = action_fn(
///     "disable.recommendations",
///     Scope::Feature("recommendations".into()),
///     move || Ok(off.store(false, Ordering::Relaxed)),
///     move || Ok(on.store(true, Ordering::Relaxed)),
/// );
/// disable.apply().unwrap();
/// assert!(!enabled.load(Ordering::Relaxed));
/// disable.undo().unwrap();
/// assert!(enabled.load(Ordering::Relaxed));
/// ```
pub fn action_fn<A, U>(name: impl Into<String>, scope: Scope, apply: A, undo: U) -> FnAction<A, U>
where
    A: Fn() -> Result<(), ActionError> + Send + Sync + 'static,
    U: Fn() -> Result<(), ActionError> + Send + Sync + 'static,
{
    FnAction {
        name: name.into(),
        scope,
        apply,
        undo,
    }
}
