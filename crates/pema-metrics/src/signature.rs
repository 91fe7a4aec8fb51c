//! sacreBLEU reproducibility signatures.

/// The sacreBLEU release whose behaviour (and signature `version:` field) this crate
/// reproduces; the conformance fixture in `fixtures/metrics/` is generated with it.
pub const SACREBLEU_VERSION: &str = "2.6.0";

/// A sacreBLEU signature: ordered `key:value` pairs joined by `|`, e.g.
/// `nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0`.
///
/// Field order follows sacreBLEU: `nrefs`, `bs`, `ar`, `seed` (shared fields), then the
/// metric's own fields, then `version`. Fields without a value are omitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    nrefs: usize,
    bs: Option<usize>,
    ar: Option<usize>,
    seed: Option<String>,
    fields: Vec<(&'static str, &'static str, String)>,
    version: String,
}

impl Signature {
    /// A signature with the shared fields set for `nrefs` references and no metric fields.
    pub fn new(nrefs: usize) -> Self {
        Self {
            nrefs,
            bs: None,
            ar: None,
            seed: None,
            fields: Vec::new(),
            version: SACREBLEU_VERSION.to_owned(),
        }
    }

    /// Appends a metric-specific field (`long` name, `short` abbreviation, value).
    pub fn with_field(
        mut self,
        long: &'static str,
        short: &'static str,
        value: impl Into<String>,
    ) -> Self {
        self.fields.push((long, short, value.into()));
        self
    }

    /// Sets the number of bootstrap resamples (`bs:`).
    pub fn with_bootstrap(mut self, n: usize) -> Self {
        self.bs = Some(n);
        self
    }

    /// Sets the number of approximate-randomisation trials (`ar:`).
    pub fn with_approximate_randomization(mut self, n: usize) -> Self {
        self.ar = Some(n);
        self
    }

    /// Sets the RNG seed (`seed:`/`rs:`), printed as given.
    pub fn with_seed(mut self, seed: impl Into<String>) -> Self {
        self.seed = Some(seed.into());
        self
    }

    /// Overrides the `version:` field.
    pub fn with_version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// The `(key, value)` pairs in output order, with long or short (`--short`) keys.
    pub fn pairs(&self, short: bool) -> Vec<(&'static str, String)> {
        let pick = |l: &'static str, s: &'static str| if short { s } else { l };
        let mut out = vec![(pick("nrefs", "#"), self.nrefs.to_string())];
        if let Some(bs) = self.bs {
            out.push((pick("bs", "bs"), bs.to_string()));
        }
        if let Some(ar) = self.ar {
            out.push((pick("ar", "ar"), ar.to_string()));
        }
        if let Some(seed) = &self.seed {
            out.push((pick("seed", "rs"), seed.clone()));
        }
        for (l, s, v) in &self.fields {
            out.push((pick(l, s), v.clone()));
        }
        out.push((pick("version", "v"), self.version.clone()));
        out
    }

    /// The signature string, as sacreBLEU's `Signature.format(short)`.
    pub fn format(&self, short: bool) -> String {
        self.pairs(short)
            .into_iter()
            .map(|(k, v)| format!("{k}:{v}"))
            .collect::<Vec<_>>()
            .join("|")
    }
}

impl std::fmt::Display for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.format(false))
    }
}

/// `yes`/`no` as sacreBLEU prints booleans.
pub(crate) fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}
