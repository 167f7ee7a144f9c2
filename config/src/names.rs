//! Names defined in a configuration (VMTAs, pools, pattern lists, named sources), looked up
//! in any case, as PowerMTA does: real files define `<smtp-pattern-list Sbcglobal-errors>` and
//! use `smtp-pattern-list sbcglobal-errors`. Each keeps the name as it was defined, which is
//! what logs and accounting rows show.

use std::collections::HashMap;

#[derive(Debug, Clone)]
pub struct Names<V> {
    /// Lower-cased name → (the name as defined, value).
    map: HashMap<String, (String, V)>,
}

/// The key for `name`: itself when already lower case (most lookups, on the delivery path:
/// no allocation), else its lower-cased copy.
fn lower(name: &str) -> std::borrow::Cow<'_, str> {
    match name.bytes().any(|b| b.is_ascii_uppercase()) {
        true => std::borrow::Cow::Owned(name.to_ascii_lowercase()),
        false => std::borrow::Cow::Borrowed(name),
    }
}

impl<V> Default for Names<V> {
    fn default() -> Self {
        Names { map: HashMap::new() }
    }
}

impl<V> Names<V> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, name: &str) -> Option<&V> {
        self.map.get(lower(name).as_ref()).map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut V> {
        self.map.get_mut(lower(name).as_ref()).map(|(_, v)| v)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.map.contains_key(lower(name).as_ref())
    }

    /// The name as it was defined, for a name in any case.
    pub fn defined(&self, name: &str) -> Option<&str> {
        self.map.get(lower(name).as_ref()).map(|(n, _)| n.as_str())
    }

    /// Defines `name`; gives back the value of a name defined before in any case.
    pub fn insert(&mut self, name: String, value: V) -> Option<V> {
        self.map.insert(name.to_ascii_lowercase(), (name, value)).map(|(_, v)| v)
    }

    /// The value of `name`, defined (as written here) with the default value if it was not.
    pub fn entry_or_default(&mut self, name: &str) -> &mut V
    where
        V: Default,
    {
        &mut self.map.entry(name.to_ascii_lowercase()).or_insert_with(|| (name.to_string(), V::default())).1
    }

    pub fn remove(&mut self, name: &str) -> Option<V> {
        self.map.remove(&name.to_ascii_lowercase()).map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The names as defined.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.map.values().map(|(n, _)| n)
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.map.values_mut().map(|(_, v)| v)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.map.values().map(|(_, v)| v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &V)> {
        self.map.values().map(|(n, v)| (n, v))
    }
}

impl<V> std::ops::Index<&str> for Names<V> {
    type Output = V;

    fn index(&self, name: &str) -> &V {
        self.get(name).unwrap_or_else(|| panic!("`{name}` is not defined"))
    }
}

impl<'a, V> IntoIterator for &'a Names<V> {
    type Item = (&'a String, &'a V);
    type IntoIter = Box<dyn Iterator<Item = (&'a String, &'a V)> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_case_finds_the_name_as_defined() {
        let mut n = Names::new();
        assert!(n.insert("Sbcglobal-errors".to_string(), 1).is_none());
        assert_eq!(n.get("sbcglobal-errors"), Some(&1));
        assert_eq!(n.defined("SBCGLOBAL-ERRORS"), Some("Sbcglobal-errors"));
        assert_eq!(n.insert("sbcglobal-ERRORS".to_string(), 2), Some(1), "the same name twice");
        assert_eq!(n.keys().collect::<Vec<_>>(), ["sbcglobal-ERRORS"]);
        *n.entry_or_default("other") += 5;
        assert_eq!(n["OTHER"], 5);
    }
}
