//! The compiled form of a JSON grammar: a graph of value nodes (one per schema, `$ref` cycles
//! allowed) plus the sorted literal sets that enums, constants and object keys are matched with.

/// Index of a [`Node`] in [`Grammar::nodes`].
pub(crate) type NodeId = u32;

/// A node's depth when no finite document can satisfy it.
pub(crate) const UNSATISFIABLE: u32 = u32::MAX;

/// One kind of JSON value.
#[derive(Clone, Debug)]
pub(crate) enum Node {
    /// One of a fixed set of JSON texts (enum, const, true/false, null), matched byte for byte.
    Lits(u32),
    /// A number; `integer` forbids a fraction and an exponent.
    Number { integer: bool },
    /// A string of `min..=max` characters (Unicode scalar values, as JSON Schema counts them).
    String { min: u32, max: u32 },
    /// An object.
    Object(Object),
    /// An array.
    Array(Array),
    /// Any of these nodes (none of them a union once compiled); empty means nothing matches.
    Union(Vec<NodeId>),
}

/// An object's properties in the order they are emitted.
#[derive(Clone, Debug)]
pub(crate) struct Object {
    /// Declared properties in schema order.
    pub props: Vec<Prop>,
    /// The value schema of keys not in `props`; `None` forbids them.
    pub additional: Option<NodeId>,
    /// `key_sets[next]`: the quoted keys that may come after `next` declared properties (the
    /// optional ones up to and including the first required one), tagged with their index.
    pub key_sets: Vec<Option<u32>>,
    /// The same past the depth limit, where optional properties that need nesting are left out
    /// so that recursive schemas end.
    pub deep_key_sets: Vec<Option<u32>>,
    /// One past the index of the last required property: the object may close once `next`
    /// reaches it.
    pub required_end: u32,
    /// The declared names, unquoted, so that an additional key can be kept from repeating one.
    pub names: u32,
}

/// A declared property.
#[derive(Clone, Debug)]
pub(crate) struct Prop {
    /// The property name.
    pub name: String,
    /// Its value schema.
    pub node: NodeId,
    /// Whether the object must have it.
    pub required: bool,
}

/// An array: per-position schemas, then one schema for the rest.
#[derive(Clone, Debug)]
pub(crate) struct Array {
    /// Schemas of the first items (`prefixItems`).
    pub prefix: Vec<NodeId>,
    /// Schema of the items after the prefix; `None` allows none.
    pub items: Option<NodeId>,
    /// Fewest items.
    pub min: u32,
    /// Most items.
    pub max: u32,
}

impl Array {
    /// The schema of item `i`, if the array may have one.
    pub fn item(&self, i: u32) -> Option<NodeId> {
        if i >= self.max {
            return None;
        }
        self.prefix.get(i as usize).copied().or(self.items)
    }
}

/// Byte strings sorted so that those sharing a prefix form a contiguous range, each with a tag
/// (the property index of a key).
#[derive(Clone, Debug, Default)]
pub(crate) struct LitSet {
    entries: Vec<(Box<[u8]>, u32)>,
}

impl LitSet {
    /// A set of `entries`; duplicates are dropped.
    pub fn new(mut entries: Vec<(Box<[u8]>, u32)>) -> Self {
        entries.sort();
        entries.dedup_by(|a, b| a.0 == b.0);
        Self { entries }
    }

    /// Number of entries.
    pub fn len(&self) -> u32 {
        self.entries.len() as u32
    }

    /// The entries.
    pub fn entries(&self) -> &[(Box<[u8]>, u32)] {
        &self.entries
    }

    /// Keeps only the entries `keep` says yes to.
    pub fn retain(&mut self, mut keep: impl FnMut(&[u8]) -> bool) {
        self.entries.retain(|e| keep(&e.0));
    }

    /// Of the entries `lo..hi` (all sharing their first `pos` bytes), the range whose byte at
    /// `pos` is `b`; empty when none.
    pub fn narrow(&self, lo: u32, hi: u32, pos: u32, b: u8) -> (u32, u32) {
        let range = &self.entries[lo as usize..hi as usize];
        let at = |e: &(Box<[u8]>, u32)| e.0.get(pos as usize).copied();
        let start = range.partition_point(|e| at(e) < Some(b));
        let end = start + range[start..].partition_point(|e| at(e) == Some(b));
        (lo + start as u32, lo + end as u32)
    }

    /// The tag of the entry in `lo..hi` that is exactly `pos` bytes long (it sorts first).
    pub fn complete(&self, lo: u32, hi: u32, pos: u32) -> Option<u32> {
        let (bytes, tag) = self.entries.get(lo as usize).filter(|_| lo < hi)?;
        (bytes.len() == pos as usize).then_some(*tag)
    }
}

/// A compiled grammar: the document is `prefix`, optional whitespace, one value of `root`, and,
/// when `suffix` is not empty, optional whitespace and `suffix`.
#[derive(Clone, Debug)]
pub(crate) struct Grammar {
    /// All nodes.
    pub nodes: Vec<Node>,
    /// All literal sets.
    pub lits: Vec<LitSet>,
    /// Per node, the fewest nested containers a document of it needs ([`UNSATISFIABLE`] when
    /// no finite one exists).
    pub min_depth: Vec<u32>,
    /// The document's value.
    pub root: NodeId,
    /// Text before the value.
    pub prefix: Box<[u8]>,
    /// Text after the value.
    pub suffix: Box<[u8]>,
}

impl Grammar {
    /// The node `id`.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id as usize]
    }

    /// The literal set `id`.
    pub fn lit_set(&self, id: u32) -> &LitSet {
        &self.lits[id as usize]
    }
}
