//! Regions: where a caller is, which of a server's clusters serves them, and the data
//! residency rules that keep some callers inside a set of regions.
//!
//! The filter decides and Envoy carries: the filter places the caller in a region and
//! names the Envoy cluster for the request (`x-mcp-cluster`, read by the route's
//! `cluster_header`); the cluster's priorities hold the failover order between regions,
//! its health checks decide when to fail over. A caller pinned by a residency rule gets a
//! cluster holding only the regions the rule allows, so Envoy has nowhere else to send
//! them.

use crate::claims;
use crate::config::{err, ConfigError};
use crate::jwt::Principal;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

/// `regions` as written by the operator.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegions {
    /// Every region a caller may be placed in.
    pub names: Vec<String>,
    /// The region of a caller no source places.
    pub default: String,
    /// Where to look for the caller's region, in order; the first that gives a known
    /// region wins.
    #[serde(default = "default_from")]
    pub from: Vec<RawSource>,
    /// Dotted path of the token claim naming the caller's region (`from: claim`).
    #[serde(default = "default_claim")]
    pub claim: String,
    /// Request header naming the caller's region (`from: header`), set by a front proxy.
    pub header: Option<String>,
    /// Peers (CIDRs) whose `header` is believed; from any other peer it is ignored and
    /// removed before the upstream.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Source address ranges and their region (`from: cidr`); the most specific wins.
    #[serde(default)]
    pub cidrs: Vec<RawCidr>,
    /// Data residency rules, tried in order: the first that matches pins the caller to
    /// its regions.
    #[serde(default)]
    pub residency: Vec<RawResidency>,
}

fn default_from() -> Vec<RawSource> {
    vec![RawSource::Claim, RawSource::Header, RawSource::Cidr]
}

fn default_claim() -> String {
    "region".into()
}

/// A place the caller's region is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawSource {
    Claim,
    Header,
    Cidr,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCidr {
    pub cidr: String,
    pub region: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawResidency {
    /// Names the rule in audit records, errors and `residency_clusters`.
    pub name: String,
    /// The rule matches a token whose claim holds this value (or a list holding it)...
    pub claim: Option<RawClaimValue>,
    /// ...or a caller with one of these roles.
    #[serde(default)]
    pub roles: Vec<String>,
    /// The regions such a caller may be served in.
    pub regions: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClaimValue {
    /// Dotted claim path.
    pub name: String,
    pub value: String,
}

/// Where a caller's region came from (recorded as `region_source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Claim,
    Header,
    Cidr,
    Default,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Claim => "claim",
            Source::Header => "header",
            Source::Cidr => "cidr",
            Source::Default => "default",
        }
    }
}

#[derive(Debug)]
struct Residency {
    name: String,
    claim: Option<(Vec<String>, String)>,
    roles: Vec<String>,
    regions: Vec<String>,
}

impl Residency {
    fn matches(&self, principal: &Principal) -> bool {
        let by_claim = self.claim.as_ref().is_some_and(|(path, want)| claims::holds(&principal.claims, path, want));
        by_claim || principal.roles.iter().any(|r| self.roles.contains(r))
    }
}

/// The compiled `regions` section.
#[derive(Debug)]
pub struct Regions {
    pub names: Vec<String>,
    default: String,
    from: Vec<RawSource>,
    claim: Vec<String>,
    pub header: Option<String>,
    trusted_proxies: Vec<Cidr>,
    /// Most specific first.
    cidrs: Vec<(Cidr, String)>,
    residency: Vec<Residency>,
}

/// Where one caller is, and the rule that pins them (if any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub region: String,
    pub source: Source,
    /// The residency rule that matched, and the regions it allows.
    pub pinned: Option<(String, Vec<String>)>,
    /// The request's region header is not believed (it came from an untrusted peer): it
    /// must not reach the upstream.
    pub drop_header: bool,
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// An address range: `10.0.0.0/8`, `fd00::/8`, or a bare address (a range of one).
/// Our own rather than `ipnet`'s: std's address parser is linked anyway, and the .wasm is
/// 7.6 KB smaller without `ipnet`'s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cidr {
    /// The address as 128 bits (IPv4 mapped into `::ffff:0:0/96`) and the prefix length in
    /// those bits.
    bits: u128,
    len: u32,
}

impl Cidr {
    fn parse(s: &str) -> Option<Cidr> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) if !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()) => (a, Some(l.parse::<u32>().ok()?)),
            Some(_) => return None,
            None => (s, None),
        };
        let (bits, offset, max) = match addr.parse::<IpAddr>().ok()? {
            IpAddr::V4(a) => (u128::from(a.to_ipv6_mapped()), 96, 32),
            IpAddr::V6(a) => (u128::from(a), 0, 128),
        };
        let len = len.unwrap_or(max);
        if len > max {
            return None;
        }
        let len = offset + len;
        Some(Cidr { bits: bits & mask(len), len })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let bits = match ip {
            IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
            // An IPv4-mapped IPv6 peer is the IPv4 address it maps.
            IpAddr::V6(a) => u128::from(a),
        };
        bits & mask(self.len) == self.bits
    }
}

/// The top `len` of 128 bits.
fn mask(len: u32) -> u128 {
    u128::MAX.checked_shl(128 - len).unwrap_or(0)
}

impl Regions {
    /// Compiles the section (error fields relative to it).
    pub fn compile(raw: RawRegions) -> Result<Regions, ConfigError> {
        if raw.names.is_empty() {
            return Err(err("names", "name at least one region"));
        }
        for (i, name) in raw.names.iter().enumerate() {
            if !valid_name(name) {
                return Err(err(format!("names[{i}]"), format!("{name:?} must be 1-64 characters of [A-Za-z0-9_-]")));
            }
            if raw.names.iter().take(i).any(|n| n == name) {
                return Err(err(format!("names[{i}]"), format!("{name:?} is listed twice")));
            }
        }
        let known = |at: String, name: &str| {
            if raw.names.iter().any(|n| n == name) {
                Ok(name.to_owned())
            } else {
                Err(err(at, format!("{name:?} is not one of regions.names")))
            }
        };
        let default = known("default".into(), &raw.default)?;
        for (i, source) in raw.from.iter().enumerate() {
            if raw.from.iter().take(i).any(|s| s == source) {
                return Err(err(format!("from[{i}]"), "each source at most once"));
            }
        }
        let claim = claims::parse_path(&raw.claim).map_err(|e| err("claim", e))?;
        let header = raw.header.map(|h| h.to_ascii_lowercase());
        if let Some(h) = &header {
            let plain = !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if !plain || h.starts_with(':') || crate::headers::is_gateway_read(h) {
                return Err(err("header", format!("{h:?} is not a header name the gateway can take a region from")));
            }
        }
        if raw.from.contains(&RawSource::Header) && header.is_some() && raw.trusted_proxies.is_empty() {
            return Err(err(
                "trusted_proxies",
                "name the front proxies whose region header is believed (no peer is trusted by default)",
            ));
        }
        let trusted_proxies = raw
            .trusted_proxies
            .iter()
            .enumerate()
            .map(|(i, s)| {
                Cidr::parse(s).ok_or_else(|| err(format!("trusted_proxies[{i}]"), format!("{s:?} is not a CIDR")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut cidrs = raw
            .cidrs
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let range = Cidr::parse(&c.cidr)
                    .ok_or_else(|| err(format!("cidrs[{i}].cidr"), format!("{:?} is not a CIDR", c.cidr)))?;
                Ok((range, known(format!("cidrs[{i}].region"), &c.region)?))
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        cidrs.sort_by_key(|(range, _)| std::cmp::Reverse(range.len));
        let mut residency = Vec::new();
        for (i, r) in raw.residency.into_iter().enumerate() {
            let at = |f: &str| format!("residency[{i}].{f}");
            if !valid_name(&r.name) {
                return Err(err(at("name"), format!("{:?} must be 1-64 characters of [A-Za-z0-9_-]", r.name)));
            }
            if residency.iter().any(|o: &Residency| o.name == r.name) {
                return Err(err(at("name"), format!("{:?} names two rules", r.name)));
            }
            if r.claim.is_none() && r.roles.is_empty() {
                return Err(err(at("claim"), "a rule needs a claim or roles to match callers by"));
            }
            if r.regions.is_empty() {
                return Err(err(at("regions"), "a rule allows at least one region"));
            }
            let regions = r
                .regions
                .iter()
                .enumerate()
                .map(|(k, n)| known(format!("{}[{k}]", at("regions")), n))
                .collect::<Result<_, _>>()?;
            let claim = match r.claim {
                None => None,
                Some(c) => Some((claims::parse_path(&c.name).map_err(|e| err(at("claim.name"), e))?, c.value)),
            };
            residency.push(Residency { name: r.name, claim, roles: r.roles, regions });
        }
        Ok(Regions { names: raw.names, default, from: raw.from, claim, header, trusted_proxies, cidrs, residency })
    }

    /// True when placing a caller needs the peer's address.
    pub fn needs_peer(&self) -> bool {
        self.header.is_some() || !self.cidrs.is_empty()
    }

    /// Places a caller: their region from the configured sources in order (an unknown
    /// region name counts as none), and the first residency rule they match.
    /// `header_value` is the region header (None when absent or repeated), `peer` the
    /// address Envoy received the request from.
    pub fn place(&self, principal: &Principal, header_value: Option<&str>, peer: Option<IpAddr>) -> Placement {
        let known = |s: &str| self.names.iter().find(|n| n.as_str() == s.trim()).cloned();
        let trusted = peer.is_some_and(|p| self.trusted_proxies.iter().any(|t| t.contains(p)));
        let mut found = None;
        for source in &self.from {
            found = match source {
                RawSource::Claim => match claims::lookup(&principal.claims, &self.claim) {
                    Some(Value::String(s)) => known(s).map(|r| (r, Source::Claim)),
                    _ => None,
                },
                RawSource::Header if trusted => header_value.and_then(known).map(|r| (r, Source::Header)),
                RawSource::Header => None,
                RawSource::Cidr => peer
                    .and_then(|p| self.cidrs.iter().find(|(range, _)| range.contains(p)))
                    .map(|(_, r)| (r.clone(), Source::Cidr)),
            };
            if found.is_some() {
                break;
            }
        }
        let (region, source) = found.unwrap_or_else(|| (self.default.clone(), Source::Default));
        let pinned = self.residency.iter().find(|r| r.matches(principal)).map(|r| (r.name.clone(), r.regions.clone()));
        Placement { region, source, pinned, drop_header: self.header.is_some() && !trusted }
    }

    pub fn has_rule(&self, name: &str) -> bool {
        self.residency.iter().any(|r| r.name == name)
    }
}

/// Where a server's replicas are, compiled from its `region`, `regional_clusters` and
/// `residency_clusters`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ServerRegions {
    /// Not placed in any region: callers pinned by a residency rule are not served.
    #[default]
    Unplaced,
    /// All of it runs in one region.
    In(String),
    /// A cluster per caller region (its priorities hold the failover order), and a
    /// cluster per residency rule holding only the regions the rule allows.
    Clusters { by_region: BTreeMap<String, String>, by_rule: BTreeMap<String, String> },
}

/// What a placed caller gets on a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Serving {
    /// Whatever the route names.
    Route,
    /// This cluster (set as `x-mcp-cluster`).
    Cluster(String),
}

/// A pinned caller the server cannot serve inside their regions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutsideResidency {
    pub rule: String,
    pub allowed: Vec<String>,
    /// Where the server runs, when it is in one region.
    pub server_region: Option<String>,
}

impl fmt::Display for OutsideResidency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "data residency rule {} allows only {}", self.rule, self.allowed.join(", "))?;
        match &self.server_region {
            Some(r) => write!(f, "; this server runs in {r}"),
            None => write!(f, "; this server has no replicas placed there"),
        }
    }
}

impl ServerRegions {
    /// How `placement` is served here.
    pub fn serve(&self, placement: &Placement) -> Result<Serving, OutsideResidency> {
        let outside = |server_region: Option<&String>| {
            let (rule, allowed) = placement.pinned.clone().unwrap_or_default();
            OutsideResidency { rule, allowed, server_region: server_region.cloned() }
        };
        match (self, &placement.pinned) {
            (ServerRegions::Unplaced, None) => Ok(Serving::Route),
            (ServerRegions::Unplaced, Some(_)) => Err(outside(None)),
            (ServerRegions::In(_), None) => Ok(Serving::Route),
            (ServerRegions::In(r), Some((_, allowed))) if allowed.contains(r) => Ok(Serving::Route),
            (ServerRegions::In(r), Some(_)) => Err(outside(Some(r))),
            (ServerRegions::Clusters { by_region, .. }, None) => {
                // Every region has a cluster (checked when compiling).
                by_region.get(&placement.region).map(|c| Serving::Cluster(c.clone())).ok_or_else(|| outside(None))
            }
            (ServerRegions::Clusters { by_rule, .. }, Some((rule, _))) => {
                by_rule.get(rule).map(|c| Serving::Cluster(c.clone())).ok_or_else(|| outside(None))
            }
        }
    }

    /// The region a single-region server runs in.
    pub fn region(&self) -> Option<&str> {
        match self {
            ServerRegions::In(r) => Some(r),
            _ => None,
        }
    }

    /// Compiles a server's fields (errors name them relative to the server).
    pub fn compile(
        region: Option<String>,
        regional: BTreeMap<String, String>,
        residency: BTreeMap<String, String>,
        regions: Option<&Regions>,
    ) -> Result<ServerRegions, ConfigError> {
        if region.is_none() && regional.is_empty() && residency.is_empty() {
            return Ok(ServerRegions::Unplaced);
        }
        let field = if region.is_some() {
            "region"
        } else if regional.is_empty() {
            "residency_clusters"
        } else {
            "regional_clusters"
        };
        let Some(regions) = regions else {
            return Err(err(field, "needs the top-level regions section"));
        };
        if let Some(r) = region {
            if !regional.is_empty() || !residency.is_empty() {
                return Err(err("region", "a server runs in one region or has regional clusters, not both"));
            }
            if !regions.names.contains(&r) {
                return Err(err("region", format!("{r:?} is not one of regions.names")));
            }
            return Ok(ServerRegions::In(r));
        }
        if regional.is_empty() {
            return Err(err("regional_clusters", "residency_clusters needs regional_clusters for the other callers"));
        }
        for (region, cluster) in &regional {
            if !regions.names.contains(region) {
                return Err(err(format!("regional_clusters.{region}"), "not one of regions.names"));
            }
            check_cluster(&format!("regional_clusters.{region}"), cluster)?;
        }
        if let Some(missing) = regions.names.iter().find(|n| !regional.contains_key(*n)) {
            return Err(err("regional_clusters", format!("name a cluster for callers in {missing:?} too")));
        }
        for (rule, cluster) in &residency {
            if !regions.has_rule(rule) {
                return Err(err(format!("residency_clusters.{rule}"), "not one of regions.residency"));
            }
            check_cluster(&format!("residency_clusters.{rule}"), cluster)?;
        }
        Ok(ServerRegions::Clusters { by_region: regional, by_rule: residency })
    }
}

fn check_cluster(at: &str, cluster: &str) -> Result<(), ConfigError> {
    let valid = !cluster.is_empty()
        && cluster.len() <= 128
        && cluster.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(err(at, format!("{cluster:?} is not an Envoy cluster name ([A-Za-z0-9_.-])")))
    }
}

/// The `region` of an Envoy `Locality` message (the `upstream.locality` property,
/// serialized protobuf: field 1 is the region).
pub fn locality_region(bytes: &[u8]) -> Option<String> {
    fn varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *bytes.get(*at)?;
            *at += 1;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }
    let mut at = 0;
    while at < bytes.len() {
        let key = varint(bytes, &mut at)?;
        match key & 7 {
            0 => {
                varint(bytes, &mut at)?;
            }
            1 => at = at.checked_add(8)?,
            5 => at = at.checked_add(4)?,
            2 => {
                let len = usize::try_from(varint(bytes, &mut at)?).ok()?;
                let end = at.checked_add(len)?;
                let value = bytes.get(at..end)?;
                if key >> 3 == 1 {
                    return std::str::from_utf8(value).ok().filter(|s| !s.is_empty()).map(str::to_owned);
                }
                at = end;
            }
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn regions(v: Value) -> Result<Regions, ConfigError> {
        Regions::compile(serde_json::from_value(v).unwrap())
    }

    fn base() -> Value {
        json!({
            "names": ["eu-west", "us-east"],
            "default": "us-east",
            "header": "x-client-region",
            "trusted_proxies": ["10.0.0.1", "192.168.0.0/16"],
            "cidrs": [{"cidr": "172.16.0.0/12", "region": "eu-west"}, {"cidr": "172.16.5.0/24", "region": "us-east"}],
            "residency": [
                {"name": "eu-only", "claim": {"name": "data_residency", "value": "eu"}, "regions": ["eu-west"]},
                {"name": "auditors", "roles": ["eu_auditor"], "regions": ["eu-west", "us-east"]}
            ]
        })
    }

    fn caller(claims: Value, roles: &[&str]) -> Principal {
        Principal {
            user_id: "alice".into(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            scopes: vec![],
            provider: "p".into(),
            claims: claims.as_object().cloned().unwrap_or_default(),
        }
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn the_region_comes_from_the_first_source_that_names_a_known_one() {
        let r = regions(base()).unwrap();
        let place = |claims: Value, header: Option<&str>, peer: &str| {
            let p = r.place(&caller(claims, &[]), header, ip(peer));
            (p.region, p.source)
        };
        let eu = || "eu-west".to_owned();
        assert_eq!(place(json!({"region": "eu-west"}), Some("us-east"), "10.0.0.1"), (eu(), Source::Claim));
        // An unknown claim value counts as none: the header is next.
        assert_eq!(place(json!({"region": "mars"}), Some("eu-west"), "10.0.0.1"), (eu(), Source::Header));
        assert_eq!(place(json!({"region": 7}), Some(" eu-west "), "192.168.3.4"), (eu(), Source::Header));
        // The header from a peer that is not a trusted proxy is not believed.
        assert_eq!(place(json!({}), Some("eu-west"), "10.0.0.2"), ("us-east".into(), Source::Default));
        // The most specific range wins.
        assert_eq!(place(json!({}), None, "172.16.9.1"), (eu(), Source::Cidr));
        assert_eq!(place(json!({}), None, "172.16.5.1"), ("us-east".into(), Source::Cidr));
        assert_eq!(place(json!({}), Some("eu-west"), "8.8.8.8"), ("us-east".into(), Source::Default));
        assert_eq!(r.place(&caller(json!({}), &[]), None, None).source, Source::Default);
    }

    #[test]
    fn the_order_of_sources_is_configurable() {
        let mut v = base();
        v["from"] = json!(["cidr", "claim"]);
        let r = regions(v).unwrap();
        let p = r.place(&caller(json!({"region": "us-east"}), &[]), Some("us-east"), ip("172.16.9.1"));
        assert_eq!((p.region.as_str(), p.source), ("eu-west", Source::Cidr));
        // The header is not a source here, and a trusted peer's one is kept (not dropped).
        let p = r.place(&caller(json!({}), &[]), Some("eu-west"), ip("10.0.0.1"));
        assert_eq!((p.region.as_str(), p.source, p.drop_header), ("us-east", Source::Default, false));
        let p = r.place(&caller(json!({}), &[]), Some("eu-west"), ip("10.9.9.9"));
        assert!(p.drop_header, "an untrusted peer's region header must not reach the upstream");
    }

    #[test]
    fn residency_rules_pin_by_claim_or_role_first_match_first() {
        let r = regions(base()).unwrap();
        let pinned = |claims: Value, roles: &[&str]| r.place(&caller(claims, roles), None, None).pinned.map(|(n, _)| n);
        assert_eq!(pinned(json!({"data_residency": "eu"}), &[]), Some("eu-only".into()));
        assert_eq!(pinned(json!({"data_residency": ["us", "eu"]}), &["eu_auditor"]), Some("eu-only".into()));
        assert_eq!(pinned(json!({"data_residency": "us"}), &["eu_auditor"]), Some("auditors".into()));
        assert_eq!(pinned(json!({"data_residency": "EU"}), &["developer"]), None);
    }

    #[test]
    fn servers_are_served_inside_residency_or_not_at_all() {
        let r = regions(base()).unwrap();
        let map = |pairs: &[(&str, &str)]| pairs.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect();
        let github = ServerRegions::compile(
            None,
            map(&[("eu-west", "gh_eu"), ("us-east", "gh_us")]),
            map(&[("eu-only", "gh_eu_only")]),
            Some(&r),
        )
        .unwrap();
        let us_only =
            ServerRegions::compile(Some("us-east".into()), BTreeMap::new(), BTreeMap::new(), Some(&r)).unwrap();
        let free = r.place(&caller(json!({"region": "eu-west"}), &[]), None, None);
        let eu_pinned = r.place(&caller(json!({"data_residency": "eu"}), &[]), None, None);
        let auditor = r.place(&caller(json!({}), &["eu_auditor"]), None, None);
        assert_eq!(github.serve(&free), Ok(Serving::Cluster("gh_eu".into())));
        assert_eq!(github.serve(&eu_pinned), Ok(Serving::Cluster("gh_eu_only".into())));
        let refused = github.serve(&auditor).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "data residency rule auditors allows only eu-west, us-east; this server has no replicas placed there"
        );
        assert_eq!(us_only.serve(&free), Ok(Serving::Route));
        assert_eq!(us_only.serve(&auditor), Ok(Serving::Route));
        let refused = us_only.serve(&eu_pinned).unwrap_err();
        assert_eq!(refused.to_string(), "data residency rule eu-only allows only eu-west; this server runs in us-east");
        assert_eq!(ServerRegions::Unplaced.serve(&free), Ok(Serving::Route));
        assert!(
            ServerRegions::Unplaced.serve(&eu_pinned).is_err(),
            "a pinned caller is never served somewhere unknown"
        );
    }

    #[test]
    fn configuration_errors_name_the_field() {
        let field = |edit: &dyn Fn(&mut Value)| {
            let mut v = base();
            edit(&mut v);
            regions(v).unwrap_err().field
        };
        assert_eq!(field(&|v| v["names"] = json!([])), "names");
        assert_eq!(field(&|v| v["names"] = json!(["eu", "eu"])), "names[1]");
        assert_eq!(field(&|v| v["names"][0] = json!("eu west")), "names[0]");
        assert_eq!(field(&|v| v["default"] = json!("mars")), "default");
        assert_eq!(field(&|v| v["from"] = json!(["claim", "claim"])), "from[1]");
        assert_eq!(field(&|v| v["claim"] = json!("a..b")), "claim");
        assert_eq!(field(&|v| v["header"] = json!("authorization")), "header");
        assert_eq!(field(&|v| v["header"] = json!("x region")), "header");
        assert_eq!(field(&|v| v["trusted_proxies"] = json!([])), "trusted_proxies");
        assert_eq!(field(&|v| v["trusted_proxies"][1] = json!("10.0.0.0/33")), "trusted_proxies[1]");
        assert_eq!(field(&|v| v["cidrs"][0]["cidr"] = json!("nope")), "cidrs[0].cidr");
        assert_eq!(field(&|v| v["cidrs"][1]["region"] = json!("mars")), "cidrs[1].region");
        assert_eq!(field(&|v| v["residency"][0]["regions"][0] = json!("mars")), "residency[0].regions[0]");
        assert_eq!(field(&|v| v["residency"][0]["regions"] = json!([])), "residency[0].regions");
        assert_eq!(field(&|v| v["residency"][1]["roles"] = json!([])), "residency[1].claim");
        assert_eq!(field(&|v| v["residency"][1]["name"] = json!("eu-only")), "residency[1].name");
        let r = regions(base()).unwrap();
        let server = |region: Option<&str>, regional: Value, residency: Value, regions: Option<&Regions>| {
            ServerRegions::compile(
                region.map(str::to_owned),
                serde_json::from_value(regional).unwrap(),
                serde_json::from_value(residency).unwrap(),
                regions,
            )
            .unwrap_err()
            .field
        };
        let both = json!({"eu-west": "a", "us-east": "b"});
        assert_eq!(server(Some("eu-west"), json!({}), json!({}), None), "region");
        assert_eq!(server(Some("mars"), json!({}), json!({}), Some(&r)), "region");
        assert_eq!(server(Some("eu-west"), both.clone(), json!({}), Some(&r)), "region");
        assert_eq!(server(None, json!({"eu-west": "a"}), json!({}), Some(&r)), "regional_clusters");
        assert_eq!(
            server(None, json!({"eu-west": "a", "us-east": "b c"}), json!({}), Some(&r)),
            "regional_clusters.us-east"
        );
        assert_eq!(server(None, json!({"eu-west": "a", "mars": "b"}), json!({}), Some(&r)), "regional_clusters.mars");
        assert_eq!(server(None, both.clone(), json!({"nope": "c"}), Some(&r)), "residency_clusters.nope");
        assert_eq!(server(None, json!({}), json!({"eu-only": "c"}), Some(&r)), "regional_clusters");
    }

    #[test]
    fn cidrs_parse_and_match_both_families() {
        let c = |s: &str| Cidr::parse(s).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(c("10.0.0.0/8").contains(ip("10.255.1.2")));
        assert!(!c("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(c("10.1.2.3/8").contains(ip("10.9.9.9")), "host bits are ignored");
        assert!(c("127.0.0.2").contains(ip("127.0.0.2")) && !c("127.0.0.2").contains(ip("127.0.0.3")));
        assert!(c("0.0.0.0/0").contains(ip("192.0.2.1")));
        assert!(!c("0.0.0.0/0").contains(ip("2001:db8::1")), "an IPv4 range holds no IPv6 address");
        assert!(c("0.0.0.0/0").contains(ip("::ffff:192.0.2.1")), "an IPv4-mapped peer is its IPv4 address");
        assert!(c("fd00::/8").contains(ip("fd12::1")) && !c("fd00::/8").contains(ip("fe80::1")));
        assert!(c("::/0").contains(ip("10.0.0.1")));
        assert_eq!(c("10.0.0.0/8").len, 104);
        for bad in ["10.0.0.0/33", "::/129", "10.0.0.0/", "10.0.0.0/+8", "10.0.0/8", "x", "", "10.0.0.0/8/8"] {
            assert_eq!(Cidr::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_region_of_a_locality_message_is_read_from_field_one() {
        // region "eu-west", zone "a"
        let msg = [&[0x0a, 7][..], b"eu-west", &[0x12, 1], b"a"].concat();
        assert_eq!(locality_region(&msg).as_deref(), Some("eu-west"));
        // zone first, then region
        let msg = [&[0x12, 1][..], b"a", &[0x0a, 2], b"us"].concat();
        assert_eq!(locality_region(&msg).as_deref(), Some("us"));
        assert_eq!(locality_region(&[]), None);
        assert_eq!(locality_region(&[0x0a, 9, b'x']), None, "a length past the end");
        assert_eq!(locality_region(&[0x12, 1, b'a']), None, "no region");
        assert_eq!(locality_region(&[0xff; 12]), None);
    }
}
