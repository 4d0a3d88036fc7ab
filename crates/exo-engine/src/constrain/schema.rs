//! JSON Schema to [`Grammar`]: the subset a decoder can enforce byte by byte.
//!
//! Supported: `type` (one or a list), `properties`, `required`, `additionalProperties`, `enum`,
//! `const`, `items`, `prefixItems`, `minItems`, `maxItems`, `anyOf`, `oneOf` (alternatives must
//! be provably disjoint), `allOf` with one member, `$ref` to any `#/...` pointer of the same
//! document (recursion allowed), `minLength`, `maxLength`, `nullable` (OpenAPI). Annotations
//! (`title`, `description`, `default`, ...) are ignored. Any other keyword is an error naming it
//! and where it is: enforcing less than the schema says would let invalid output through.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::grammar::{Array, Grammar, LitSet, Node, NodeId, Object, Prop, UNSATISFIABLE};
use super::{disjoint, matcher, SchemaError};

/// Keywords that only describe a schema, or hold definitions for `$ref`.
const ANNOTATIONS: &[&str] = &[
    "title", "description", "$schema", "$id", "$comment", "default", "examples", "deprecated", "readOnly", "writeOnly",
    "$defs", "definitions",
];
/// Keywords that constrain values and are enforced.
const ENFORCED: &[&str] = &[
    "type", "enum", "const", "properties", "required", "additionalProperties", "items", "prefixItems", "minItems",
    "maxItems", "anyOf", "oneOf", "allOf", "$ref", "minLength", "maxLength", "nullable",
];
const OBJECT_KEYWORDS: &[&str] = &["properties", "required", "additionalProperties"];
const ARRAY_KEYWORDS: &[&str] = &["items", "prefixItems", "minItems", "maxItems"];
const STRING_KEYWORDS: &[&str] = &["minLength", "maxLength"];

/// Compiles `schema` into a grammar whose documents are exactly the values it enforces.
pub(crate) fn compile(schema: &Value) -> Result<Grammar, SchemaError> {
    let mut c = Compiler { root: schema, ..Compiler::default() };
    let root = c.schema(schema, "#")?;
    c.finish(root)
}

fn err<T>(path: &str, message: impl Into<String>) -> Result<T, SchemaError> {
    Err(SchemaError { path: path.to_string(), message: message.into() })
}

/// `path` extended by one JSON-pointer token.
fn join(path: &str, token: &str) -> String {
    format!("{path}/{}", token.replace('~', "~0").replace('/', "~1"))
}

#[derive(Default)]
struct Compiler<'a> {
    root: &'a Value,
    nodes: Vec<Node>,
    lits: Vec<LitSet>,
    refs: HashMap<String, NodeId>,
    any: Option<NodeId>,
    /// Enum nodes to filter against the rest of their schema: (literals, rest, path).
    enums: Vec<(NodeId, NodeId, String)>,
    /// `oneOf` alternatives to prove disjoint, with their path.
    one_ofs: Vec<(Vec<NodeId>, String)>,
}

impl<'a> Compiler<'a> {
    fn push(&mut self, node: Node) -> NodeId {
        self.nodes.push(node);
        (self.nodes.len() - 1) as NodeId
    }

    fn lit_set(&mut self, entries: Vec<(Box<[u8]>, u32)>) -> u32 {
        self.lits.push(LitSet::new(entries));
        (self.lits.len() - 1) as u32
    }

    fn literals<'v>(&mut self, values: impl IntoIterator<Item = &'v Value>) -> NodeId {
        let entries = values.into_iter().map(|v| (v.to_string().into_bytes().into_boxed_slice(), 0)).collect();
        let set = self.lit_set(entries);
        self.push(Node::Lits(set))
    }

    /// Any JSON value.
    fn any(&mut self) -> NodeId {
        if let Some(a) = self.any {
            return a;
        }
        let id = self.push(Node::Union(Vec::new()));
        self.any = Some(id);
        let scalars = self.literals(&[Value::Null, Value::Bool(true), Value::Bool(false)]);
        let number = self.push(Node::Number { integer: false });
        let string = self.push(Node::String { min: 0, max: u32::MAX });
        let object = self.object_node(Vec::new(), Some(id));
        let array = self.push(Node::Array(Array { prefix: Vec::new(), items: Some(id), min: 0, max: u32::MAX }));
        self.nodes[id as usize] = Node::Union(vec![object, array, string, number, scalars]);
        id
    }

    fn object_node(&mut self, props: Vec<Prop>, additional: Option<NodeId>) -> NodeId {
        // Key sets and names are filled in by `finish`, once it is known which properties can
        // be satisfied at all.
        self.push(Node::Object(Object { props, additional, key_sets: Vec::new(), deep_key_sets: Vec::new(), required_end: 0, names: 0 }))
    }

    fn schema(&mut self, v: &Value, path: &str) -> Result<NodeId, SchemaError> {
        let m = match v {
            Value::Bool(true) => return Ok(self.any()),
            Value::Bool(false) => return Ok(self.push(Node::Union(Vec::new()))),
            Value::Object(m) => m,
            _ => return err(path, format!("a schema must be an object or a boolean, not {v}")),
        };
        if let Some(k) = m.keys().find(|k| !ANNOTATIONS.contains(&k.as_str()) && !ENFORCED.contains(&k.as_str())) {
            return err(path, format!("keyword `{k}` is not supported (supported: {})", ENFORCED.join(", ")));
        }
        let nullable = match m.get("nullable") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => return err(&join(path, "nullable"), format!("must be true or false, not {other}")),
        };
        let node = self.core(m, path)?;
        Ok(if nullable {
            let null = self.literals(&[Value::Null]);
            self.push(Node::Union(vec![node, null]))
        } else {
            node
        })
    }

    /// The schema without `nullable`.
    fn core(&mut self, m: &Map<String, Value>, path: &str) -> Result<NodeId, SchemaError> {
        let alone = |kw: &str| match m.keys().find(|k| *k != kw && *k != "nullable" && !ANNOTATIONS.contains(&k.as_str())) {
            Some(other) => err(path, format!("`{kw}` together with `{other}` is not supported")),
            None => Ok(()),
        };
        if let Some(r) = m.get("$ref") {
            alone("$ref")?;
            return self.reference(r, &join(path, "$ref"));
        }
        if let Some(all) = m.get("allOf") {
            alone("allOf")?;
            let p = join(path, "allOf");
            return match all.as_array().map(Vec::as_slice) {
                Some([one]) => self.schema(one, &join(&p, "0")),
                _ => err(&p, "only `allOf` with exactly one schema is supported"),
            };
        }
        for kw in ["anyOf", "oneOf"] {
            if let Some(list) = m.get(kw) {
                alone(kw)?;
                return self.union(kw, list, &join(path, kw));
            }
        }
        if m.contains_key("enum") || m.contains_key("const") {
            return self.enumeration(m, path);
        }
        self.typed(m, path)
    }

    fn reference(&mut self, r: &Value, path: &str) -> Result<NodeId, SchemaError> {
        let Some(target) = r.as_str() else { return err(path, format!("must be a string, not {r}")) };
        if let Some(&id) = self.refs.get(target) {
            return Ok(id);
        }
        let Some(pointer) = target.strip_prefix('#') else {
            return err(path, format!("`{target}` is not a reference into this schema (only `#/...` is supported)"));
        };
        let Some(schema) = self.root.pointer(pointer) else {
            return err(path, format!("`{target}` points to nothing in this schema"));
        };
        // Reserve the node first so that a recursive reference finds it.
        let id = self.push(Node::Union(Vec::new()));
        self.refs.insert(target.to_string(), id);
        let inner = self.schema(schema, target)?;
        self.nodes[id as usize] = Node::Union(vec![inner]);
        Ok(id)
    }

    fn union(&mut self, kw: &str, list: &Value, path: &str) -> Result<NodeId, SchemaError> {
        let Some(list) = list.as_array().filter(|l| !l.is_empty()) else {
            return err(path, "must be a non-empty array of schemas");
        };
        let alts = list.iter().enumerate().map(|(i, s)| self.schema(s, &join(path, &i.to_string()))).collect::<Result<Vec<_>, _>>()?;
        if kw == "oneOf" {
            self.one_ofs.push((alts.clone(), path.to_string()));
        }
        Ok(self.push(Node::Union(alts)))
    }

    fn enumeration(&mut self, m: &Map<String, Value>, path: &str) -> Result<NodeId, SchemaError> {
        let mut values: Vec<&Value> = match m.get("enum") {
            None => Vec::new(),
            Some(Value::Array(list)) if !list.is_empty() => list.iter().collect(),
            Some(_) => return err(&join(path, "enum"), "must be a non-empty array"),
        };
        if let Some(c) = m.get("const") {
            if m.contains_key("enum") {
                values.retain(|v| json_eq(v, c));
            } else {
                values.push(c);
            }
        }
        let rest: Map<String, Value> =
            m.iter().filter(|(k, _)| !matches!(k.as_str(), "enum" | "const" | "nullable")).map(|(k, v)| (k.clone(), v.clone())).collect();
        let rest = self.schema(&Value::Object(rest), path)?;
        let node = self.literals(values);
        self.enums.push((node, rest, path.to_string()));
        Ok(node)
    }

    fn typed(&mut self, m: &Map<String, Value>, path: &str) -> Result<NodeId, SchemaError> {
        let p = join(path, "type");
        let types: Vec<&str> = match m.get("type") {
            None => {
                // Without `type`, the keywords present say what the schema is about; values of
                // other types would match too, but generating only these is still valid.
                let has = |kws: &[&str]| kws.iter().any(|k| m.contains_key(*k));
                let inferred: Vec<&str> = [("object", OBJECT_KEYWORDS), ("array", ARRAY_KEYWORDS), ("string", STRING_KEYWORDS)]
                    .into_iter()
                    .filter(|(_, kws)| has(kws))
                    .map(|(t, _)| t)
                    .collect();
                if inferred.is_empty() {
                    return Ok(self.any());
                }
                inferred
            }
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) if !ts.is_empty() => {
                ts.iter().map(|t| t.as_str().ok_or(())).collect::<Result<_, _>>().or_else(|_| err(&p, "must name types as strings"))?
            }
            Some(other) => return err(&p, format!("must be a type name or a non-empty list of them, not {other}")),
        };
        let mut alts = Vec::with_capacity(types.len());
        for t in types {
            alts.push(match t {
                "object" => self.object(m, path)?,
                "array" => self.array(m, path)?,
                "string" => {
                    let (min, max) = self.bounds(m, path, "minLength", "maxLength")?;
                    self.push(Node::String { min, max })
                }
                "integer" | "number" => self.push(Node::Number { integer: t == "integer" }),
                "boolean" => self.literals(&[Value::Bool(true), Value::Bool(false)]),
                "null" => self.literals(&[Value::Null]),
                other => return err(&p, format!("unknown type `{other}`")),
            });
        }
        Ok(if alts.len() == 1 { alts[0] } else { self.push(Node::Union(alts)) })
    }

    fn bounds(&self, m: &Map<String, Value>, path: &str, lo: &str, hi: &str) -> Result<(u32, u32), SchemaError> {
        let get = |k: &str, default: u32| match m.get(k) {
            None => Ok(default),
            Some(v) => v
                .as_u64()
                .map(|n| n.min(u32::MAX as u64) as u32)
                .map_or_else(|| err(&join(path, k), format!("must be a non-negative integer, not {v}")), Ok),
        };
        let (min, max) = (get(lo, 0)?, get(hi, u32::MAX)?);
        if min > max {
            return err(path, format!("`{lo}` {min} is more than `{hi}` {max}"));
        }
        Ok((min, max))
    }

    fn object(&mut self, m: &Map<String, Value>, path: &str) -> Result<NodeId, SchemaError> {
        let required: Vec<&str> = match m.get("required") {
            None => Vec::new(),
            Some(Value::Array(r)) => r
                .iter()
                .map(|v| v.as_str().ok_or(()))
                .collect::<Result<_, _>>()
                .or_else(|_| err(&join(path, "required"), "must be an array of property names"))?,
            Some(_) => return err(&join(path, "required"), "must be an array of property names"),
        };
        let mut props = Vec::new();
        match m.get("properties") {
            None => {}
            Some(Value::Object(ps)) => {
                let base = join(path, "properties");
                for (name, s) in ps {
                    let node = self.schema(s, &join(&base, name))?;
                    props.push(Prop { name: name.clone(), node, required: required.contains(&name.as_str()) });
                }
            }
            Some(_) => return err(&join(path, "properties"), "must be an object of schemas"),
        }
        let additional = match m.get("additionalProperties") {
            None | Some(Value::Bool(true)) => Some(self.any()),
            Some(Value::Bool(false)) => None,
            Some(s) => Some(self.schema(s, &join(path, "additionalProperties"))?),
        };
        // A required property that is not declared is generated after the declared ones.
        for r in required {
            if props.iter().any(|p| p.name == r) {
                continue;
            }
            let Some(node) = additional else {
                return err(path, format!("required property `{r}` is not in `properties` and `additionalProperties` is false"));
            };
            props.push(Prop { name: r.to_string(), node, required: true });
        }
        Ok(self.object_node(props, additional))
    }

    fn array(&mut self, m: &Map<String, Value>, path: &str) -> Result<NodeId, SchemaError> {
        let prefix = match m.get("prefixItems") {
            None => Vec::new(),
            Some(Value::Array(list)) => {
                let p = join(path, "prefixItems");
                list.iter().enumerate().map(|(i, s)| self.schema(s, &join(&p, &i.to_string()))).collect::<Result<_, _>>()?
            }
            Some(_) => return err(&join(path, "prefixItems"), "must be an array of schemas"),
        };
        let items = match m.get("items") {
            None | Some(Value::Bool(true)) => Some(self.any()),
            Some(Value::Bool(false)) => None,
            Some(Value::Array(_)) => return err(&join(path, "items"), "an array of schemas (draft-04 tuples) is not supported; use `prefixItems`"),
            Some(s) => Some(self.schema(s, &join(path, "items"))?),
        };
        let (min, mut max) = self.bounds(m, path, "minItems", "maxItems")?;
        if items.is_none() {
            max = max.min(prefix.len() as u32);
        }
        if min > max {
            return err(path, format!("`minItems` {min} is more than the {max} items the array can hold"));
        }
        Ok(self.push(Node::Array(Array { prefix, items, min, max })))
    }

    fn finish(mut self, root: NodeId) -> Result<Grammar, SchemaError> {
        self.flatten_unions();
        let min_depth = min_depths(&self.nodes, &self.lits);
        if min_depth[root as usize] == UNSATISFIABLE {
            return err("#", "no finite JSON document satisfies this schema");
        }
        self.drop_unsatisfiable(&min_depth);
        let mut g = Grammar {
            nodes: self.nodes,
            lits: self.lits,
            min_depth,
            root,
            prefix: Box::default(),
            suffix: Box::default(),
        };
        for (node, rest, path) in &self.enums {
            let &Node::Lits(set) = g.node(*node) else { continue };
            let mut lits = std::mem::take(&mut g.lits[set as usize]);
            lits.retain(|bytes| matcher::accepts(&g, *rest, bytes));
            if lits.len() == 0 {
                return err(path, "no value of `enum`/`const` satisfies the rest of the schema");
            }
            g.lits[set as usize] = lits;
        }
        for (alts, path) in &self.one_ofs {
            for (i, &a) in alts.iter().enumerate() {
                for (j, &b) in alts.iter().enumerate().skip(i + 1) {
                    if !disjoint::disjoint(&g, a, b) {
                        return err(
                            path,
                            format!("alternatives {i} and {j} may both match one value, which `oneOf` forbids; exo enforces `oneOf` only where alternatives differ in type, length range, literal values or a required property"),
                        );
                    }
                }
            }
        }
        Ok(g)
    }

    /// Replaces each union's members that are unions by their members, so that a value never
    /// starts with a union nested in a union.
    fn flatten_unions(&mut self) {
        for id in 0..self.nodes.len() {
            if !matches!(self.nodes[id], Node::Union(_)) {
                continue;
            }
            let (mut flat, mut seen, mut todo) = (Vec::new(), vec![id as NodeId], vec![id as NodeId]);
            while let Some(n) = todo.pop() {
                let Node::Union(alts) = &self.nodes[n as usize] else { continue };
                for &a in alts.iter().rev() {
                    if matches!(self.nodes[a as usize], Node::Union(_)) {
                        if !seen.contains(&a) {
                            seen.push(a);
                            todo.push(a);
                        }
                    } else if !flat.contains(&a) {
                        flat.push(a);
                    }
                }
            }
            self.nodes[id] = Node::Union(flat);
        }
    }

    /// Removes choices no finite document can take (a union's alternative, an optional property,
    /// more array items), so that generation never enters a state it cannot finish.
    fn drop_unsatisfiable(&mut self, md: &[u32]) {
        let ok = |n: NodeId| md[n as usize] != UNSATISFIABLE;
        let mut objects = Vec::new();
        for (id, node) in self.nodes.iter_mut().enumerate() {
            match node {
                Node::Union(alts) => alts.retain(|&a| ok(a)),
                Node::Array(a) => {
                    if let Some(i) = a.prefix.iter().position(|&p| !ok(p)) {
                        a.max = a.max.min(i as u32);
                    }
                    a.items = a.items.filter(|&n| ok(n));
                    if a.items.is_none() {
                        a.max = a.max.min(a.prefix.len() as u32);
                    }
                }
                Node::Object(o) => {
                    o.additional = o.additional.filter(|&n| ok(n));
                    objects.push(id);
                }
                _ => {}
            }
        }
        for id in objects {
            let Node::Object(o) = &self.nodes[id] else { continue };
            let names = o.props.iter().enumerate().map(|(i, p)| (p.name.as_bytes().into(), i as u32)).collect();
            let required_end = o.props.iter().rposition(|p| p.required).map_or(0, |i| i as u32 + 1);
            let shallow = key_candidates(o, |p| ok(p.node));
            let deep = key_candidates(o, |p| ok(p.node) && (p.required || md[p.node as usize] == 0));
            let mut sets = |c: Vec<Vec<(Box<[u8]>, u32)>>| c.into_iter().map(|e| (!e.is_empty()).then(|| self.lit_set(e))).collect();
            let (key_sets, deep_key_sets) = (sets(shallow), sets(deep));
            let names = self.lit_set(names);
            if let Node::Object(o) = &mut self.nodes[id] {
                (o.key_sets, o.deep_key_sets, o.names, o.required_end) = (key_sets, deep_key_sets, names, required_end);
            }
        }
    }
}

/// For each count of properties already written, the quoted keys that may come next: the
/// optional ones `usable` allows up to and including the first required one.
fn key_candidates(o: &Object, usable: impl Fn(&Prop) -> bool) -> Vec<Vec<(Box<[u8]>, u32)>> {
    (0..=o.props.len())
        .map(|next| {
            let mut entries = Vec::new();
            for (i, p) in o.props.iter().enumerate().skip(next) {
                if usable(p) {
                    entries.push((Value::String(p.name.clone()).to_string().into_bytes().into_boxed_slice(), i as u32));
                }
                if p.required {
                    break;
                }
            }
            entries
        })
        .collect()
}

/// Per node, the fewest nested containers a document of it needs, by fixpoint iteration from
/// "unsatisfiable" (recursive references converge because depths only decrease).
fn min_depths(nodes: &[Node], lits: &[LitSet]) -> Vec<u32> {
    let mut md = vec![UNSATISFIABLE; nodes.len()];
    let deeper = |worst: Option<u32>| worst.unwrap_or(0).saturating_add(1);
    loop {
        let mut changed = false;
        for (i, node) in nodes.iter().enumerate() {
            let d = match node {
                Node::Lits(set) => if lits[*set as usize].len() > 0 { 0 } else { UNSATISFIABLE },
                Node::Number { .. } | Node::String { .. } => 0,
                Node::Object(o) => deeper(o.props.iter().filter(|p| p.required).map(|p| md[p.node as usize]).max()),
                Node::Array(a) => {
                    let needed = a.prefix.iter().take(a.min as usize).map(|&p| md[p as usize]);
                    let rest = (a.min as usize > a.prefix.len()).then(|| a.items.map_or(UNSATISFIABLE, |n| md[n as usize]));
                    if a.min > a.max { UNSATISFIABLE } else { deeper(needed.chain(rest).max()) }
                }
                Node::Union(alts) => alts.iter().map(|&a| md[a as usize]).min().unwrap_or(UNSATISFIABLE),
            };
            if d < md[i] {
                md[i] = d;
                changed = true;
            }
        }
        if !changed {
            return md;
        }
    }
}

/// JSON equality with numbers compared by value (`1` equals `1.0`), as JSON Schema compares.
pub(crate) fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b)),
        (Value::Object(x), Value::Object(y)) => x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w))),
        _ => a == b,
    }
}
