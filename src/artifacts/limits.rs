//! The caps on what one request may ask of the REST facade, in one table:
//! the lists and fields of a `POST /artifacts` body, the config blob and
//! manifest it becomes, the host list of an artifact and the
//! `POST /artifacts/{id}/hosts` body. Each cap names its field, its
//! machine-readable code and its status (a count over its cap is 400, a
//! size 413). Also the bounded readers of the capped lists and of
//! `metadata`, which never hold more than their cap while a body is read
//! (a body of small JSON values would otherwise cost many times its size).

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Hosts of one artifact: in one create, and in all (`POST .../hosts`).
pub const MAX_HOSTS: usize = 1000;
/// Entries of `tags`.
pub const MAX_TAGS: usize = 64;
/// Bytes of `metadata`, serialized as compact JSON.
pub const MAX_METADATA_BYTES: u64 = 64 * 1024;
/// Bytes of `description` (it is also a manifest annotation).
pub const MAX_DESCRIPTION_BYTES: u64 = 16 * 1024;
/// Bytes of `kernel_version`.
pub const MAX_KERNEL_VERSION_BYTES: u64 = 256;
/// Bytes of the config blob a create stores, and the most the index reads
/// of any artifact's config: one number, so what is stored is read back.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;
/// Bytes of a `POST /artifacts/{id}/hosts` body.
pub const MAX_HOST_BODY_BYTES: u64 = 64 * 1024;

/// One cap of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Hosts,
    Tags,
    Metadata,
    Description,
    KernelVersion,
    Config,
    /// The artifact manifest against the registry's manifest cap.
    Manifest,
    HostBody,
}

impl Limit {
    /// The field (or object) the cap is on, as the client knows it.
    pub fn field(self) -> &'static str {
        match self {
            Limit::Hosts => "hosts",
            Limit::Tags => "tags",
            Limit::Metadata => "metadata",
            Limit::Description => "description",
            Limit::KernelVersion => "kernel_version",
            Limit::Config => "the config blob",
            Limit::Manifest => "the artifact manifest",
            Limit::HostBody => "the request body",
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Limit::Hosts => "too_many_hosts",
            Limit::Tags => "too_many_tags",
            Limit::Metadata => "metadata_too_large",
            Limit::Description => "description_too_large",
            Limit::KernelVersion => "kernel_version_too_large",
            Limit::Config => "config_too_large",
            Limit::Manifest => "manifest_too_large",
            Limit::HostBody => "body_too_large",
        }
    }

    /// Counts over their cap are 400; sizes are 413.
    pub fn status(self) -> u16 {
        if self.is_count() {
            400
        } else {
            413
        }
    }

    fn is_count(self) -> bool {
        matches!(self, Limit::Hosts | Limit::Tags)
    }

    /// The refusal of a request whose `field` is over `max` (`actual`:
    /// its count or size, when known).
    pub fn refusal(self, max: u64, actual: Option<u64>) -> super::ArtifactError {
        super::ArtifactError::OverLimit {
            limit: self,
            max,
            actual,
        }
    }

    /// The message of a refusal: the field, what it has when known, the cap.
    pub fn describe(self, max: u64, actual: Option<u64>) -> String {
        let (field, code) = (self.field(), self.code());
        match (self.is_count(), actual) {
            (true, Some(n)) => {
                format!("{field} has {n} entries, over the limit of {max} ({code})")
            }
            (true, None) => format!("{field} has more than {max} entries ({code})"),
            (false, Some(n)) => {
                format!("{field} is {n} bytes, over the {max}-byte limit ({code})")
            }
            (false, None) => format!("{field} is over the {max}-byte limit ({code})"),
        }
    }
}

/// A JSON array read up to `N` items; the rest are counted, not kept.
#[derive(Debug, Clone, PartialEq)]
pub struct CappedList<T, const N: usize> {
    pub items: Vec<T>,
    /// How many items the array had.
    pub total: usize,
}

impl<T, const N: usize> CappedList<T, N> {
    pub fn is_over(&self) -> bool {
        self.total > N
    }
}

impl<'de, T: Deserialize<'de>, const N: usize> Deserialize<'de> for CappedList<T, N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ListVisitor<T, const N: usize>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>, const N: usize> Visitor<'de> for ListVisitor<T, N> {
            type Value = CappedList<T, N>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(N));
                let mut total = 0usize;
                loop {
                    if items.len() < N {
                        match seq.next_element::<T>()? {
                            Some(v) => items.push(v),
                            None => break,
                        }
                    } else if seq.next_element::<IgnoredAny>()?.is_none() {
                        break;
                    }
                    total = total.saturating_add(1);
                }
                Ok(CappedList { items, total })
            }
        }
        d.deserialize_seq(ListVisitor(PhantomData))
    }
}

/// The `metadata` object, read with a byte budget: past it nothing more
/// is kept (the rest of the object is skipped) and it is marked over.
#[derive(Debug, Clone, PartialEq)]
pub struct CappedMetadata {
    pub map: Map<String, Value>,
    /// Its compact JSON size when within the cap; `None` once over it.
    pub size: Option<u64>,
}

impl CappedMetadata {
    pub fn is_over(&self) -> bool {
        self.size.is_none_or(|n| n > MAX_METADATA_BYTES)
    }
}

impl<'de> Deserialize<'de> for CappedMetadata {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let budget = Budget {
            left: Cell::new(MAX_METADATA_BYTES),
            over: Cell::new(false),
        };
        let value = d.deserialize_map(ValueVisitor { budget: &budget })?;
        if budget.over.get() {
            return Ok(CappedMetadata {
                map: Map::new(),
                size: None,
            });
        }
        let Value::Object(map) = value else {
            return Err(de::Error::custom("metadata must be a JSON object"));
        };
        let size = serde_json::to_vec(&map).map_err(de::Error::custom)?.len() as u64;
        Ok(CappedMetadata {
            map,
            size: Some(size),
        })
    }
}

/// What is left of the metadata budget, counted as a lower bound of the
/// compact JSON size of what was read (so over the budget is surely over
/// the cap), and whether it ran out.
struct Budget {
    left: Cell<u64>,
    over: Cell<bool>,
}

impl Budget {
    /// Takes `n` bytes; false (and over, from now on) when they are not left.
    fn charge(&self, n: usize) -> bool {
        let n = n as u64;
        match self.left.get().checked_sub(n) {
            Some(rest) if !self.over.get() => {
                self.left.set(rest);
                true
            }
            _ => {
                self.over.set(true);
                false
            }
        }
    }
    fn is_over(&self) -> bool {
        self.over.get()
    }
}

struct ValueSeed<'b> {
    budget: &'b Budget,
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor {
            budget: self.budget,
        })
    }
}

/// Builds a `serde_json::Value` while the budget lasts; past it, every
/// value is `Null` and nested content is skipped unread.
struct ValueVisitor<'b> {
    budget: &'b Budget,
}

impl ValueVisitor<'_> {
    fn kept(&self, n: usize, v: impl FnOnce() -> Value) -> Value {
        if self.budget.charge(n) {
            v()
        } else {
            Value::Null
        }
    }
}

impl<'de> Visitor<'de> for ValueVisitor<'_> {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Value, E> {
        Ok(self.kept(if b { 4 } else { 5 }, || Value::Bool(b)))
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Value, E> {
        Ok(self.kept(1, || Value::from(n)))
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Value, E> {
        Ok(self.kept(1, || Value::from(n)))
    }
    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Value, E> {
        Ok(self.kept(1, || Value::from(n)))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Value, E> {
        Ok(self.kept(s.len().saturating_add(2), || Value::String(s.to_owned())))
    }
    fn visit_string<E: de::Error>(self, s: String) -> Result<Value, E> {
        Ok(self.kept(s.len().saturating_add(2), || Value::String(s)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(self.kept(4, || Value::Null))
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        ValueSeed {
            budget: self.budget,
        }
        .deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.budget.charge(2);
        let mut out = Vec::new();
        loop {
            if self.budget.is_over() {
                if seq.next_element::<IgnoredAny>()?.is_none() {
                    break;
                }
                continue;
            }
            let seed = ValueSeed {
                budget: self.budget,
            };
            match seq.next_element_seed(seed)? {
                // The separator before every item but the first.
                Some(v) => {
                    if !out.is_empty() {
                        self.budget.charge(1);
                    }
                    out.push(v);
                }
                None => break,
            }
        }
        Ok(if self.budget.is_over() {
            Value::Null
        } else {
            Value::Array(out)
        })
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.budget.charge(2);
        let mut out = Map::new();
        loop {
            if self.budget.is_over() {
                if map.next_entry::<IgnoredAny, IgnoredAny>()?.is_none() {
                    break;
                }
                continue;
            }
            let Some(key) = map.next_key::<String>()? else {
                break;
            };
            // `"key":` and the separator before every entry but the first.
            let separator = usize::from(!out.is_empty());
            self.budget
                .charge(key.len().saturating_add(3).saturating_add(separator));
            let value = map.next_value_seed(ValueSeed {
                budget: self.budget,
            })?;
            out.insert(key, value);
        }
        Ok(if self.budget.is_over() {
            Value::Null
        } else {
            Value::Object(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(text: &str) -> CappedMetadata {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn capped_lists_keep_up_to_their_cap_and_count_the_rest() {
        let l: CappedList<String, 2> = serde_json::from_str(r#"["a","b","c",4,{"x":[]}]"#).unwrap();
        assert_eq!(l.items, ["a", "b"]);
        assert_eq!(l.total, 5);
        assert!(l.is_over());
        let l: CappedList<String, 2> = serde_json::from_str(r#"["a","b"]"#).unwrap();
        assert!(!l.is_over());
        // Within the cap, items are still type-checked.
        assert!(serde_json::from_str::<CappedList<String, 2>>("[1]").is_err());
        assert!(serde_json::from_str::<CappedList<String, 2>>("{}").is_err());
    }

    #[test]
    fn metadata_within_the_budget_is_kept_with_its_exact_size() {
        let text = r#"{"a":[1,2.5,true,null,{"b":"c"}],"d":"e"}"#;
        let m = meta(text);
        assert_eq!(
            Value::Object(m.map.clone()),
            serde_json::from_str::<Value>(text).unwrap()
        );
        assert_eq!(m.size, Some(text.len() as u64));
        assert!(!m.is_over());
        assert!(serde_json::from_str::<CappedMetadata>("[1]").is_err());
        assert!(serde_json::from_str::<CappedMetadata>(r#""s""#).is_err());
    }

    #[test]
    fn metadata_at_and_over_the_cap() {
        let max = MAX_METADATA_BYTES as usize;
        // {"m":"…"} is 8 bytes around the string.
        let at = format!(r#"{{"m":"{}"}}"#, "x".repeat(max - 8));
        assert_eq!(meta(&at).size, Some(max as u64));
        assert!(!meta(&at).is_over());
        let over = format!(r#"{{"m":"{}"}}"#, "x".repeat(max - 7));
        assert!(meta(&over).is_over());
        // Many small values: refused once the budget is spent, nothing kept.
        let zeros = format!(r#"{{"z":[{}0]}}"#, "0,".repeat(max));
        let m = meta(&zeros);
        assert!(m.is_over());
        assert!(m.map.is_empty());
    }

    #[test]
    fn every_limit_names_its_field_code_and_cap() {
        let m = Limit::Hosts.describe(1000, Some(10_000));
        assert!(m.contains("hosts") && m.contains("1000") && m.contains("too_many_hosts"));
        assert_eq!(Limit::Hosts.status(), 400);
        assert_eq!(Limit::Description.status(), 413);
        assert!(Limit::Metadata.describe(65536, None).contains("65536"));
    }
}
