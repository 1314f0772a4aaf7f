//! Live reload: push what can change while running through the handles, report the rest.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use palisade_breaker::{BreakerHandle, Thresholds};
use palisade_bulkhead::BulkheadHandle;
use palisade_core::audit::AuditEvent;
use palisade_core::signal::LoadSignal;
use palisade_degrade::{GateHandle, Level};
use palisade_ratelimit::{Rate, RateLimitHandle};

use super::build::breaker_builder;
use super::error::{ConfigError, ConfigErrorKind};
use super::schema::{BreakerConfig, BulkheadConfig, GateConfig, RateLimitConfig};
use super::Config;
use crate::stack::Handles;

/// The `kind` of the audit record of a reload.
pub const RELOADED_KIND: &str = "config.reloaded";

/// What a [`Config::reload`] did: the changes applied live, and the changes that only take effect
/// after a restart (rebuilding the stack).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    applied: Vec<String>,
    restart_required: Vec<String>,
}

impl ReloadReport {
    /// The changes applied through the handles, e.g. `server.rate_limit.tiers.gold: 100/1s burst 100
    /// -> 200/1s burst 200`.
    pub fn applied(&self) -> &[String] {
        &self.applied
    }

    /// The keys whose change needs a restart, each with the reason.
    pub fn restart_required(&self) -> &[String] {
        &self.restart_required
    }

    /// Whether some change needs a restart.
    pub fn needs_restart(&self) -> bool {
        !self.restart_required.is_empty()
    }

    /// Whether the new config changed nothing.
    pub fn is_unchanged(&self) -> bool {
        self.applied.is_empty() && self.restart_required.is_empty()
    }
}

impl fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_unchanged() {
            return f.write_str("no change");
        }
        write!(
            f,
            "{} applied, {} need a restart",
            self.applied.len(),
            self.restart_required.len()
        )?;
        for a in &self.applied {
            write!(f, "\n  applied: {a}")?;
        }
        for r in &self.restart_required {
            write!(f, "\n  restart: {r}")?;
        }
        Ok(())
    }
}

/// One change pushed through a handle, and how to take it back.
enum Action {
    Tier(RateLimitHandle, String, Rate),
    RemoveTier(RateLimitHandle, String),
    Global(RateLimitHandle, Rate),
    Assign(RateLimitHandle, http::HeaderValue, String),
    Unassign(RateLimitHandle, http::HeaderValue),
    Breaker(BreakerHandle, Thresholds),
    MaxConcurrent(BulkheadHandle, usize),
    MaxPerTenant(BulkheadHandle, Option<usize>),
    GateLevel(GateHandle, Level),
    GateClear(GateHandle),
}

/// How to take an applied action back.
enum Undo {
    Nothing,
    Tier(RateLimitHandle, String, Rate),
    /// Removes a tier the reload created.
    RemoveTier(RateLimitHandle, String),
    Global(RateLimitHandle, Rate),
    Tenant(RateLimitHandle, http::HeaderValue, Arc<str>),
    Breaker(BreakerHandle, Thresholds),
}

fn rate_text(r: &Rate) -> String {
    format!(
        "{}/{} burst {}",
        r.limit(),
        super::duration::format_duration(r.period()),
        r.burst_size()
    )
}

fn tier_rate(h: &RateLimitHandle, name: &str) -> Option<Rate> {
    h.metrics()
        .into_iter()
        .rev()
        .find(|m| &*m.name == name)
        .map(|m| m.rate)
}

/// The live rates a rate-limit config gives (every tier, the default one included) and its global
/// rate, as the builder works them out (read from a scratch layer).
fn rate_limit_rates(c: &RateLimitConfig) -> Option<(BTreeMap<String, Rate>, Option<Rate>)> {
    let mut metrics = super::build::scratch_rate_limit(c)?.metrics();
    // `metrics` lists the tiers by name, then the global limit (if any).
    let global = if c.global.is_some() {
        metrics.pop().map(|m| m.rate)
    } else {
        None
    };
    let tiers = metrics
        .into_iter()
        .map(|m| (m.name.to_string(), m.rate))
        .collect();
    Some((tiers, global))
}

impl Config {
    /// Reloads to `new`: validates it completely (a reload that fails validation changes nothing),
    /// then pushes every change that can be made while running through `server`'s handles (and
    /// `client`'s, for the client stack), and reports the rest as needing a restart.
    ///
    /// Applied live: rate-limit tiers (created, changed or removed, `anonymous` included), the default
    /// and global rates, tenant assignments; the gate's
    /// level (`initial_level`: set by hand, or handed back to automatic mode when it returns to
    /// `normal`); the bulkhead's `max_concurrent` and `max_per_tenant`; the breakers' thresholds
    /// (`consecutive_failures`, `failure_rate`, `slow_call_rate`, `minimum_calls`). If a handle refuses a
    /// change (say a tier that refills slower than the running layer's idle timeout, or the removal of
    /// a tier that tenants were assigned to through the handle), the changes already applied are taken
    /// back — tiers the reload created are removed again — and the error names the key.
    ///
    /// The reload is recorded in the audit log of `server`'s handles as `config.reloaded`, with the
    /// origin, what was applied and what needs a restart. Keep `new` as the current config
    /// afterwards: the next reload compares against it.
    ///
    /// # Errors
    ///
    /// `new` is invalid, or a handle refused a change (nothing is left changed).
    pub fn reload(
        &self,
        new: &Config,
        server: &Handles,
        client: Option<&Handles>,
    ) -> Result<ReloadReport, ConfigError> {
        new.validate()?;
        let mut report = ReloadReport::default();
        let mut actions: Vec<(String, Action)> = Vec::new();
        self.plan_server(new, server, &mut actions, &mut report);
        match client {
            Some(handles) => self.plan_client(new, handles, &mut actions, &mut report),
            None => {
                if self.client != new.client {
                    report
                        .restart_required
                        .push("client: changed, but no client handles were given".to_owned());
                }
            }
        }
        // Fallible changes first, so that the infallible ones never need taking back.
        actions.sort_by_key(|(_, a)| match a {
            Action::Tier(..) => 0,
            Action::Global(..) => 1,
            Action::Assign(..) | Action::Unassign(..) => 2,
            // After the assignments, which move the config's tenants out of a removed tier.
            Action::RemoveTier(..) => 3,
            Action::Breaker(..) => 4,
            _ => 5,
        });
        let mut undo: Vec<Undo> = Vec::new();
        for (key, action) in actions {
            match apply(action, &mut undo) {
                Ok(text) => report.applied.push(format!("{key}: {text}")),
                Err(problem) => {
                    for u in undo.into_iter().rev() {
                        revert(u);
                    }
                    return Err(new.provenance.error(
                        ConfigErrorKind::Reload,
                        &key,
                        format!("the running layer refused the change: {problem}"),
                    ));
                }
            }
        }
        tracing::info!(
            target: "palisade::config",
            origin = %new.origin(),
            applied = report.applied.len(),
            restart_required = report.restart_required.len(),
            "config reloaded"
        );
        server.audit().record_with(|| {
            AuditEvent::new(RELOADED_KIND)
                .detail("origin", new.origin())
                .detail("applied", report.applied.clone())
                .detail("restart_required", report.restart_required.clone())
        });
        Ok(report)
    }

    fn plan_server(
        &self,
        new: &Config,
        h: &Handles,
        actions: &mut Vec<(String, Action)>,
        report: &mut ReloadReport,
    ) {
        let (old_s, new_s) = (&self.server, &new.server);
        let restart = &mut report.restart_required;
        if old_s.tenant_header != new_s.tenant_header
            || old_s.tenant_max_len != new_s.tenant_max_len
        {
            restart.push(
                "server.tenant_header: the tenant key is fixed when the stack is built".to_owned(),
            );
        }
        // Gate.
        match (&old_s.gate, &new_s.gate) {
            (Some(o), Some(n)) => match h.gate() {
                Some(handle) => {
                    let (old_level, new_level) = (self.gate_level(o), new.gate_level(n));
                    if old_level != new_level {
                        let action = if new_level == Level::Normal && handle.is_auto() {
                            Action::GateClear(handle.clone())
                        } else {
                            Action::GateLevel(handle.clone(), new_level)
                        };
                        actions.push(("server.gate.initial_level".to_owned(), action));
                    }
                    let strip = |g: &GateConfig| GateConfig {
                        initial_level: None,
                        ..g.clone()
                    };
                    if strip(o) != strip(n) || (o.level_from_env && self.gate_env != new.gate_env) {
                        restart.push(changed_needs_restart(
                            "server.gate",
                            "settings other than the level",
                        ));
                    }
                }
                None => restart.push(no_handle("server.gate")),
            },
            (o, n) => section_added_or_removed("server.gate", o.is_some(), n.is_some(), restart),
        }
        // Rate limit.
        match (&old_s.rate_limit, &new_s.rate_limit) {
            (Some(o), Some(n)) => match h.rate_limit() {
                Some(handle) => plan_rate_limit(o, n, handle, actions, restart),
                None => restart.push(no_handle("server.rate_limit")),
            },
            (o, n) => {
                section_added_or_removed("server.rate_limit", o.is_some(), n.is_some(), restart)
            }
        }
        plan_bulkhead(
            "server.bulkhead",
            &old_s.bulkhead,
            &new_s.bulkhead,
            h.bulkhead(),
            actions,
            restart,
        );
        plan_breaker(
            "server.breaker",
            &old_s.breaker,
            &new_s.breaker,
            h.breaker(),
            actions,
            restart,
        );
        restart_if_changed("server.adaptive", &old_s.adaptive, &new_s.adaptive, restart);
        restart_if_changed("server.timeout", &old_s.timeout, &new_s.timeout, restart);
        restart_if_changed("server.fallback", &old_s.fallback, &new_s.fallback, restart);
        restart_if_changed("server.chaos", &old_s.chaos, &new_s.chaos, restart);
        restart_if_changed(
            "server.idempotency",
            &old_s.idempotency,
            &new_s.idempotency,
            restart,
        );
    }

    fn plan_client(
        &self,
        new: &Config,
        h: &Handles,
        actions: &mut Vec<(String, Action)>,
        report: &mut ReloadReport,
    ) {
        let (o, n) = (&self.client, &new.client);
        let restart = &mut report.restart_required;
        restart_if_changed(
            "client.total_timeout",
            &o.total_timeout,
            &n.total_timeout,
            restart,
        );
        restart_if_changed("client.hedge", &o.hedge, &n.hedge, restart);
        restart_if_changed("client.retry", &o.retry, &n.retry, restart);
        restart_if_changed("client.adaptive", &o.adaptive, &n.adaptive, restart);
        plan_breaker(
            "client.breaker",
            &o.breaker,
            &n.breaker,
            h.breaker(),
            actions,
            restart,
        );
        restart_if_changed(
            "client.per_try_timeout",
            &o.per_try_timeout,
            &n.per_try_timeout,
            restart,
        );
        plan_bulkhead(
            "client.bulkhead",
            &o.bulkhead,
            &n.bulkhead,
            h.bulkhead(),
            actions,
            restart,
        );
        restart_if_changed("client.chaos", &o.chaos, &n.chaos, restart);
    }

    /// The level a gate built from `g` starts at (the builder's rules, `level_from_env` included).
    fn gate_level(&self, g: &GateConfig) -> Level {
        self.gate_builder(g, &LoadSignal::new())
            .build()
            .map_or(Level::Normal, |layer| layer.handle().level())
    }
}

fn changed_needs_restart(key: &str, what: &str) -> String {
    format!("{key}: {what} changed; they take effect when the stack is rebuilt")
}

fn no_handle(key: &str) -> String {
    format!("{key}: changed, but the handles given have no such layer")
}

fn section_added_or_removed(key: &str, old: bool, new: bool, restart: &mut Vec<String>) {
    match (old, new) {
        (false, true) => restart.push(format!(
            "{key}: layer added; it joins the stack when it is rebuilt"
        )),
        (true, false) => restart.push(format!(
            "{key}: layer removed; it leaves the stack when it is rebuilt"
        )),
        _ => {}
    }
}

fn restart_if_changed<T: PartialEq>(
    key: &str,
    old: &Option<T>,
    new: &Option<T>,
    restart: &mut Vec<String>,
) {
    match (old, new) {
        (Some(o), Some(n)) if o != n => restart.push(changed_needs_restart(key, "settings")),
        (o, n) => section_added_or_removed(key, o.is_some(), n.is_some(), restart),
    }
}

fn plan_rate_limit(
    o: &RateLimitConfig,
    n: &RateLimitConfig,
    handle: &RateLimitHandle,
    actions: &mut Vec<(String, Action)>,
    restart: &mut Vec<String>,
) {
    let (Some((old_tiers, old_global)), Some((new_tiers, new_global))) =
        (rate_limit_rates(o), rate_limit_rates(n))
    else {
        restart.push(changed_needs_restart("server.rate_limit", "settings"));
        return;
    };
    for (name, rate) in &new_tiers {
        if old_tiers.get(name) != Some(rate) {
            let key = if name == "default" {
                "server.rate_limit.default_rate".to_owned()
            } else {
                format!("server.rate_limit.tiers.{name}")
            };
            actions.push((key, Action::Tier(handle.clone(), name.clone(), *rate)));
        }
    }
    for name in old_tiers.keys().filter(|t| !new_tiers.contains_key(*t)) {
        actions.push((
            format!("server.rate_limit.tiers.{name}"),
            Action::RemoveTier(handle.clone(), name.clone()),
        ));
    }
    match (old_global, new_global) {
        (Some(a), Some(b)) if a != b => {
            actions.push((
                "server.rate_limit.global".to_owned(),
                Action::Global(handle.clone(), b),
            ));
        }
        (None, Some(_)) => restart.push(
            "server.rate_limit.global: added; the running layer was built without a global limit"
                .to_owned(),
        ),
        (Some(_), None) => restart.push(
            "server.rate_limit.global: removed; it stays until the stack is rebuilt".to_owned(),
        ),
        _ => {}
    }
    for (tenant, tier) in &n.tenants {
        if o.tenants.get(tenant) != Some(tier) {
            actions.push((
                format!("server.rate_limit.tenants.{tenant}"),
                Action::Assign(
                    handle.clone(),
                    tenant.as_header_value().clone(),
                    tier.clone(),
                ),
            ));
        }
    }
    for tenant in o.tenants.keys().filter(|t| !n.tenants.contains_key(*t)) {
        actions.push((
            format!("server.rate_limit.tenants.{tenant}"),
            Action::Unassign(handle.clone(), tenant.as_header_value().clone()),
        ));
    }
    let strip = |c: &RateLimitConfig| RateLimitConfig {
        default_rate: None,
        tiers: BTreeMap::new(),
        tenants: BTreeMap::new(),
        global: None,
        ..c.clone()
    };
    if strip(o) != strip(n) {
        restart.push(changed_needs_restart(
            "server.rate_limit",
            "settings other than rates and tenants",
        ));
    }
}

fn plan_bulkhead(
    key: &str,
    old: &Option<BulkheadConfig>,
    new: &Option<BulkheadConfig>,
    handle: Option<&BulkheadHandle>,
    actions: &mut Vec<(String, Action)>,
    restart: &mut Vec<String>,
) {
    let (Some(o), Some(n)) = (old, new) else {
        section_added_or_removed(key, old.is_some(), new.is_some(), restart);
        return;
    };
    if o == n {
        return;
    }
    let Some(handle) = handle else {
        restart.push(no_handle(key));
        return;
    };
    // The builder's limits for each config (defaults included), read from a scratch layer.
    let limits = super::build::scratch_bulkhead_limits;
    let (Some((old_max, old_share)), Some((new_max, new_share))) = (limits(o), limits(n)) else {
        restart.push(changed_needs_restart(key, "settings"));
        return;
    };
    if old_max != new_max {
        actions.push((
            format!("{key}.max_concurrent"),
            Action::MaxConcurrent(handle.clone(), new_max),
        ));
    }
    if old_share != new_share {
        actions.push((
            format!("{key}.max_per_tenant"),
            Action::MaxPerTenant(handle.clone(), new_share),
        ));
    }
    let strip = |c: &BulkheadConfig| BulkheadConfig {
        max_concurrent: None,
        max_per_tenant: None,
        ..c.clone()
    };
    if strip(o) != strip(n) {
        restart.push(changed_needs_restart(key, "settings other than the limits"));
    }
}

fn plan_breaker(
    key: &str,
    old: &Option<BreakerConfig>,
    new: &Option<BreakerConfig>,
    handle: Option<&BreakerHandle>,
    actions: &mut Vec<(String, Action)>,
    restart: &mut Vec<String>,
) {
    let (Some(o), Some(n)) = (old, new) else {
        section_added_or_removed(key, old.is_some(), new.is_some(), restart);
        return;
    };
    if o == n {
        return;
    }
    let Some(handle) = handle else {
        restart.push(no_handle(key));
        return;
    };
    let thresholds = |c: &BreakerConfig| {
        breaker_builder(c)
            .build()
            .ok()
            .map(|l| l.handle().thresholds())
    };
    match (thresholds(o), thresholds(n)) {
        (Some(a), Some(b)) if a != b => {
            actions.push((key.to_owned(), Action::Breaker(handle.clone(), b)));
        }
        (Some(_), Some(_)) => {}
        _ => restart.push(changed_needs_restart(key, "settings")),
    }
    let strip = |c: &BreakerConfig| BreakerConfig {
        consecutive_failures: None,
        failure_rate: None,
        no_failure_rate: false,
        slow_call_rate: None,
        minimum_calls: None,
        ..c.clone()
    };
    if strip(o) != strip(n) {
        restart.push(changed_needs_restart(
            key,
            "settings other than the thresholds",
        ));
    }
}

fn apply(action: Action, undo: &mut Vec<Undo>) -> Result<String, String> {
    match action {
        Action::Tier(h, name, rate) => {
            let before = tier_rate(&h, &name);
            h.set_tier(&name, rate).map_err(|e| e.to_string())?;
            let text = match before {
                Some(b) => format!("{} -> {}", rate_text(&b), rate_text(&rate)),
                None => format!("tier created: {}", rate_text(&rate)),
            };
            undo.push(match before {
                Some(b) => Undo::Tier(h, name, b),
                None => Undo::RemoveTier(h, name),
            });
            Ok(text)
        }
        Action::RemoveTier(h, name) => {
            let before = tier_rate(&h, &name);
            let removed = h.remove_tier(&name).map_err(|e| e.to_string())?;
            match (removed, before) {
                (true, Some(b)) => {
                    undo.push(Undo::Tier(h, name, b));
                    Ok(format!("tier removed (was {})", rate_text(&b)))
                }
                (true, None) => Ok("tier removed".to_owned()),
                (false, _) => Ok("tier removed (it was not in the running layer)".to_owned()),
            }
        }
        Action::Global(h, rate) => {
            let before = tier_rate(&h, "global");
            h.set_global(rate).map_err(|e| e.to_string())?;
            let text = match before {
                Some(b) => format!("{} -> {}", rate_text(&b), rate_text(&rate)),
                None => rate_text(&rate),
            };
            undo.push(before.map_or(Undo::Nothing, |b| Undo::Global(h, b)));
            Ok(text)
        }
        Action::Assign(h, tenant, tier) => {
            let before = h.tier_of(&tenant);
            h.assign(&tenant, &tier).map_err(|e| e.to_string())?;
            let text = format!("tier {before} -> {tier}");
            undo.push(Undo::Tenant(h, tenant, before));
            Ok(text)
        }
        Action::Unassign(h, tenant) => {
            let before = h.tier_of(&tenant);
            h.unassign(&tenant);
            undo.push(Undo::Tenant(h, tenant, before.clone()));
            Ok(format!("tier {before} -> default"))
        }
        Action::Breaker(h, t) => {
            let before = h.thresholds();
            h.set_thresholds(t).map_err(|e| e.to_string())?;
            undo.push(Undo::Breaker(h, before));
            Ok(format!("thresholds {before:?} -> {t:?}"))
        }
        Action::MaxConcurrent(h, n) => {
            let before = h.max_concurrent();
            h.set_max_concurrent(n);
            Ok(format!("{before} -> {n}"))
        }
        Action::MaxPerTenant(h, n) => {
            let before = h.max_per_tenant();
            h.set_max_per_tenant(n);
            Ok(format!("{before:?} -> {n:?}"))
        }
        Action::GateLevel(h, level) => {
            let before = h.set_level(level, "config reload");
            Ok(format!("level {before} -> {level}"))
        }
        Action::GateClear(h) => {
            h.clear_manual("config reload");
            Ok(format!(
                "manual level cleared; automatic level {}",
                h.level()
            ))
        }
    }
}

fn revert(u: Undo) {
    // Each of these restores a value the handle itself reported a moment ago.
    let restored = match u {
        Undo::Nothing => Ok(()),
        Undo::Tier(h, name, rate) => h.set_tier(&name, rate),
        Undo::RemoveTier(h, name) => h.remove_tier(&name).map(|_| ()),
        Undo::Global(h, rate) => h.set_global(rate),
        Undo::Tenant(h, tenant, tier) => {
            if &*tier == "default" {
                h.unassign(&tenant);
                Ok(())
            } else {
                h.assign(&tenant, &tier)
            }
        }
        Undo::Breaker(h, t) => h.set_thresholds(t),
    };
    if let Err(e) = restored {
        tracing::error!(target: "palisade::config", error = %e, "could not take back a reload change");
    }
}
