//! The hub's module graph, checked from its sources: no import cycle between its files (a
//! module's own submodules aside), and no file over the project's 800-line limit.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, recursively.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `link/commit.rs` → `link::commit`, `link/mod.rs` → `link`, `lib.rs` → `` (the root).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap_or(file).with_extension("");
    let mut parts: Vec<String> =
        rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    if parts.last().is_some_and(|l| l == "mod" || l == "lib") {
        parts.pop();
    }
    parts.join("::")
}

/// The code of a file without its unit tests (a `#[cfg(test)]` module at its end).
fn production(text: &str) -> &str {
    text.find("#[cfg(test)]\nmod ").map_or(text, |i| &text[..i])
}

/// The modules a file's code names through `crate::` or `super::` paths, resolved to the longest
/// module that exists.
fn uses(module: &str, code: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (prefix, base) in [("crate::", String::new()), ("super::", parent(module))] {
        let mut rest = code;
        while let Some(i) = rest.find(prefix) {
            let after = &rest[i + prefix.len()..];
            let path: Vec<&str> = after
                .split("::")
                .map(|seg| {
                    let end = seg
                        .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                        .unwrap_or(seg.len());
                    &seg[..end]
                })
                .take_while(|seg| !seg.is_empty())
                .collect();
            let mut target = None;
            for n in 0..=path.len() {
                let mut candidate = base.clone();
                for seg in &path[..n] {
                    if !candidate.is_empty() {
                        candidate.push_str("::");
                    }
                    candidate.push_str(seg);
                }
                if modules.contains(&candidate) {
                    target = Some(candidate);
                }
            }
            if let Some(t) = target {
                out.insert(t);
            }
            rest = after;
        }
    }
    out
}

fn parent(module: &str) -> String {
    module.rsplit_once("::").map_or(String::new(), |(p, _)| p.to_owned())
}

/// Whether `a` is `b`, or one contains the other (a module and its own submodules).
fn related(a: &str, b: &str) -> bool {
    let inside = |x: &str, y: &str| y.is_empty() || x == y || x.starts_with(&format!("{y}::"));
    inside(a, b) || inside(b, a)
}

/// The module graph of the hub's library (tests and the binary left out).
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.retain(|f| {
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
        name != "main.rs" && name != "tests.rs" && name != "layout_tests.rs"
    });
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut graph = BTreeMap::new();
    for f in &files {
        let module = module_of(&src, f);
        let text = std::fs::read_to_string(f).unwrap_or_default();
        let edges: BTreeSet<String> = uses(&module, production(&text), &modules)
            .into_iter()
            .filter(|t| !related(&module, t))
            .collect();
        graph.entry(module).or_insert_with(BTreeSet::new).extend(edges);
    }
    graph
}

/// A cycle in `graph`, if there is one (depth-first search).
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|n| n == node) {
            let mut c = stack[i..].to_vec();
            c.push(node.to_owned());
            return Some(c);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_hub_has_no_import_cycle() {
    let g = graph();
    // The check sees what it must: the API asks the link, the link does not know the API.
    assert!(g["api"].contains("link"), "{g:#?}");
    assert!(g.iter().filter(|(m, _)| m.starts_with("link")).all(|(_, e)| !e.contains("api")));
    assert_eq!(cycle(&g), None, "an import cycle in the hub");
}

#[test]
fn the_cycle_check_finds_a_cycle() {
    let mut g = graph();
    g.entry("clock".into()).or_default().insert("api".into());
    let c = cycle(&g).expect("a cycle through clock and api");
    assert!(c.contains(&"clock".to_owned()) && c.contains(&"api".to_owned()), "{c:?}");
}

#[test]
fn no_file_is_over_800_lines() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    sources(&root.join("examples"), &mut files);
    assert!(files.len() > 40, "the sources were found: {files:?}");
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let lines = std::fs::read_to_string(f).ok()?.lines().count();
            (lines > 800).then(|| format!("{} ({lines} lines)", f.display()))
        })
        .collect();
    assert!(long.is_empty(), "files over the project's 800-line limit: {long:?}");
}
