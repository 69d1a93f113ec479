//! A bound on how deep llguidance's JSON schema compiler recurses, checked before it
//! runs. It recurses once per nesting level and follows every `$ref` into its target
//! at once (each target once), so a flat chain of a few thousand `$defs` that refer to
//! each other needs more stack than any thread has, and a stack overflow aborts the
//! whole server: no `catch_unwind` can stop it.
//!
//! The bound over-approximates: the recursion descends at most the schema's depth,
//! plus, for every distinct `$ref` it follows, the height of the target's subtree.
//! Compiles then run on a thread whose stack fits [`MAX_RECURSION`] levels with room
//! to spare ([`COMPILE_STACK`]).

use std::collections::{HashMap, HashSet};

use serde_json::Value;

/// JSON nesting allowed in a schema: serde_json's own parse limit.
pub(super) const MAX_DEPTH: usize = 128;
/// Recursion levels allowed (depth plus followed `$ref` targets' heights). Real schemas
/// stay in the hundreds; a level costs llguidance ≈ 3–5 KiB of stack.
pub(super) const MAX_RECURSION: usize = 4_000;
/// The compile thread's stack: [`MAX_RECURSION`] levels at ≈ 5 KiB, three times over.
/// Only the pages touched are ever committed.
pub(super) const COMPILE_STACK: usize = 64 << 20;

/// `Err` with the reason when compiling `schema` could recurse past the limits.
pub(super) fn check(schema: &Value) -> Result<(), String> {
    let shape = Shape::of(schema)?;
    let mut bound = shape.depth;
    let mut followed = HashSet::new();
    for &r in &shape.refs {
        // With `$id`s a `#/...` ref is relative to its enclosing resource, so equal
        // strings may name different targets: count every occurrence, at full depth.
        if !shape.has_ids && !followed.insert(r) {
            continue;
        }
        let target = if shape.has_ids { None } else { local_target(schema, r) };
        bound += match target {
            Some(t) => shape.height(t),
            None => shape.depth,
        };
        if bound > MAX_RECURSION {
            return Err(format!(
                "schema nests too deeply through $ref (more than {MAX_RECURSION} levels)"
            ));
        }
    }
    Ok(())
}

/// The node a `#` or `#/json/pointer` ref names in `root`; `None` for anything else
/// (anchors, other documents, percent-encoded pointers), which counts at full depth.
fn local_target<'a>(root: &'a Value, r: &str) -> Option<&'a Value> {
    let fragment = r.strip_prefix('#')?;
    if fragment.is_empty() {
        return Some(root);
    }
    if fragment.contains('%') {
        return None;
    }
    root.pointer(fragment)
}

struct Shape<'a> {
    depth: usize,
    /// Height of every array and object, by address (scalars have height 0).
    heights: HashMap<usize, usize>,
    refs: Vec<&'a str>,
    has_ids: bool,
}

impl<'a> Shape<'a> {
    /// One iterative post-order walk: this check must not recurse either.
    fn of(root: &'a Value) -> Result<Self, String> {
        let mut shape =
            Shape { depth: 0, heights: HashMap::new(), refs: Vec::new(), has_ids: false };
        let mut stack = vec![(root, 0usize, false)];
        while let Some((node, depth, children_done)) = stack.pop() {
            if depth > MAX_DEPTH {
                return Err(format!("schema nested deeper than {MAX_DEPTH} levels"));
            }
            shape.depth = shape.depth.max(depth);
            if children_done {
                let height = children(node).map(|c| shape.height(c) + 1).max().unwrap_or(1);
                shape.heights.insert(addr(node), height);
                continue;
            }
            match node {
                Value::Object(map) => {
                    for (k, v) in map {
                        match (k.as_str(), v) {
                            ("$ref", Value::String(s)) => shape.refs.push(s),
                            ("$id" | "id", Value::String(_)) => shape.has_ids = true,
                            _ => {}
                        }
                    }
                }
                Value::Array(_) => {}
                _ => continue,
            }
            stack.push((node, depth, true));
            stack.extend(children(node).map(|c| (c, depth + 1, false)));
        }
        Ok(shape)
    }

    fn height(&self, node: &Value) -> usize {
        self.heights.get(&addr(node)).copied().unwrap_or(0)
    }
}

fn children(node: &Value) -> Box<dyn Iterator<Item = &Value> + '_> {
    match node {
        Value::Object(map) => Box::new(map.values()),
        Value::Array(items) => Box::new(items.iter()),
        _ => Box::new(std::iter::empty()),
    }
}

fn addr(node: &Value) -> usize {
    std::ptr::from_ref(node).addr()
}
