//! Header mutations (`*_headers_to_add` / `*_headers_to_remove`) with Envoy's append actions.

use http::{HeaderMap, HeaderName, HeaderValue};

/// Envoy's `HeaderValueOption.HeaderAppendAction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendAction {
    AppendIfExistsOrAdd,
    AddIfAbsent,
    OverwriteIfExistsOrAdd,
    OverwriteIfExists,
}

#[derive(Debug, Clone)]
pub struct HeaderAdd {
    pub name: HeaderName,
    pub value: HeaderValue,
    pub action: AppendAction,
    pub keep_empty_value: bool,
}

/// The headers one level (route, virtual host or route configuration) adds and removes.
#[derive(Debug, Clone, Default)]
pub struct HeaderMutation {
    pub add: Vec<HeaderAdd>,
    pub remove: Vec<HeaderName>,
}

impl HeaderMutation {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }

    /// Removes, then adds, as Envoy's header parser does for one level.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for h in &self.add {
            if h.value.is_empty() && !h.keep_empty_value {
                continue;
            }
            match h.action {
                AppendAction::AppendIfExistsOrAdd => {
                    headers.append(h.name.clone(), h.value.clone());
                }
                AppendAction::AddIfAbsent => {
                    if !headers.contains_key(&h.name) {
                        headers.insert(h.name.clone(), h.value.clone());
                    }
                }
                AppendAction::OverwriteIfExistsOrAdd => {
                    headers.insert(h.name.clone(), h.value.clone());
                }
                AppendAction::OverwriteIfExists => {
                    if headers.contains_key(&h.name) {
                        headers.insert(h.name.clone(), h.value.clone());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_actions() {
        let add = |action| HeaderAdd {
            name: HeaderName::from_static("x-a"),
            value: HeaderValue::from_static("new"),
            action,
            keep_empty_value: false,
        };
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("old"));
        let m = HeaderMutation { add: vec![add(AppendAction::AppendIfExistsOrAdd)], remove: vec![] };
        m.apply(&mut h);
        assert_eq!(h.get_all("x-a").iter().count(), 2);
        let m = HeaderMutation { add: vec![add(AppendAction::OverwriteIfExistsOrAdd)], remove: vec![] };
        m.apply(&mut h);
        assert_eq!(h.get_all("x-a").iter().collect::<Vec<_>>(), vec!["new"]);
        let mut empty = HeaderMap::new();
        HeaderMutation { add: vec![add(AppendAction::OverwriteIfExists)], remove: vec![] }.apply(&mut empty);
        assert!(empty.is_empty());
        HeaderMutation { add: vec![add(AppendAction::AddIfAbsent)], remove: vec![] }.apply(&mut empty);
        assert_eq!(empty["x-a"], "new");
        HeaderMutation { add: vec![], remove: vec![HeaderName::from_static("x-a")] }.apply(&mut empty);
        assert!(empty.is_empty());
    }
}
