//! Whether two compiled schemas can match the same value, decided conservatively: `oneOf` is
//! enforced by generating any alternative, which is only right when no value matches two.

use serde_json::Value;

use super::grammar::{Grammar, Node, NodeId, Object};
use super::matcher;
use super::schema::json_eq;

/// Nesting past which two schemas are assumed to overlap.
const MAX_NESTING: u32 = 16;

/// True only if no JSON value matches both `a` and `b`.
pub(crate) fn disjoint(g: &Grammar, a: NodeId, b: NodeId) -> bool {
    apart(g, a, b, 0)
}

#[derive(PartialEq, Eq)]
enum Kind {
    Number,
    String,
    Object,
    Array,
    Scalar,
}

fn kind(node: &Node) -> Kind {
    match node {
        Node::Number { .. } => Kind::Number,
        Node::String { .. } => Kind::String,
        Node::Object(_) => Kind::Object,
        Node::Array(_) => Kind::Array,
        Node::Lits(_) | Node::Union(_) => Kind::Scalar,
    }
}

fn apart(g: &Grammar, a: NodeId, b: NodeId, depth: u32) -> bool {
    if depth > MAX_NESTING {
        return false;
    }
    match (g.node(a), g.node(b)) {
        (Node::Union(xs), _) => xs.iter().all(|&x| apart(g, x, b, depth + 1)),
        (_, Node::Union(ys)) => ys.iter().all(|&y| apart(g, a, y, depth + 1)),
        (&Node::Lits(s), _) => g.lit_set(s).entries().iter().all(|(e, _)| literal_outside(g, e, b)),
        (_, &Node::Lits(s)) => g.lit_set(s).entries().iter().all(|(e, _)| literal_outside(g, e, a)),
        (x, y) if kind(x) != kind(y) => true,
        (&Node::String { min: a0, max: a1 }, &Node::String { min: b0, max: b1 }) => a1 < b0 || b1 < a0,
        (Node::Object(x), Node::Object(y)) => required_apart(g, x, y, depth) || required_apart(g, y, x, depth),
        (Node::Array(x), Node::Array(y)) => {
            x.max < y.min
                || y.max < x.min
                || (x.min > 0 && y.min > 0 && matches!((x.item(0), y.item(0)), (Some(p), Some(q)) if apart(g, p, q, depth + 1)))
        }
        _ => false,
    }
}

/// Whether some property `x` requires cannot take a value `y` allows for it.
fn required_apart(g: &Grammar, x: &Object, y: &Object, depth: u32) -> bool {
    x.props.iter().filter(|p| p.required).any(|p| match y.props.iter().find(|q| q.name == p.name) {
        Some(q) => apart(g, p.node, q.node, depth + 1),
        None => y.additional.is_none_or(|n| apart(g, p.node, n, depth + 1)),
    })
}

/// Whether the JSON text `lit` cannot match `node`.
fn literal_outside(g: &Grammar, lit: &[u8], node: NodeId) -> bool {
    let Ok(v) = serde_json::from_slice::<Value>(lit) else { return false };
    match g.node(node) {
        &Node::Lits(s) => g.lit_set(s).entries().iter().all(|(e, _)| serde_json::from_slice(e).is_ok_and(|w: Value| !json_eq(&v, &w))),
        Node::Union(alts) => alts.iter().all(|&a| literal_outside(g, lit, a)),
        // The automaton knows one spelling of a value; numbers and containers have others
        // (`1.0`, reordered keys), so only a different kind proves them apart.
        other => match v {
            Value::Number(_) => kind(other) != Kind::Number,
            Value::Object(_) => kind(other) != Kind::Object,
            Value::Array(_) => kind(other) != Kind::Array,
            _ => !matcher::accepts(g, node, lit),
        },
    }
}
