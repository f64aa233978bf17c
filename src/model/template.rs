//! Templates in component fields (`{{ node.address }}`), rendered per node with that node's facts
//! and its cluster's. Undefined names are errors, and rendering is bounded in work and output, so
//! a template in a cluster file can neither misbehave quietly nor run away.

use std::cell::RefCell;
use std::collections::BTreeMap;

use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior};
use serde::Serialize;

use super::spec::ComponentSpec;
use super::{Cluster, Component, ComponentFile, Node};

/// Work one template may do (minijinja fuel; a plain substitution costs a few units).
const FUEL: u64 = 20_000;
/// What an undefined-name error tells the author.
const KNOWN_NAMES: &str = "templates can use node.{name, address, internalAddress, roles, labels} \
    and cluster.{name, etcd, controlplane, etcdClientPort, etcdPeerPort, etcdPki}";
/// Characters one rendered field may hold.
pub const MAX_RENDERED: usize = 64 * 1024;

/// What templates can read: `node.*` and `cluster.*`.
#[derive(Debug, Clone, Serialize)]
pub struct Facts {
    pub node: NodeFacts,
    pub cluster: ClusterFacts,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeFacts {
    pub name: String,
    pub address: String,
    pub internal_address: String,
    pub roles: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterFacts {
    pub name: String,
    /// The etcd members, in file order.
    pub etcd: Vec<NodeFacts>,
    /// The control-plane nodes, in file order.
    pub controlplane: Vec<NodeFacts>,
    pub etcd_client_port: u16,
    pub etcd_peer_port: u16,
    /// The directory on every node holding the cluster's etcd CA (`ca.pem`) and the node's
    /// client certificate (`client.pem`, `client-key.pem`), for components that talk to etcd.
    pub etcd_pki: String,
}

impl Facts {
    pub fn new(cluster: &Cluster, node: &Node) -> Facts {
        Facts {
            node: node_facts(node),
            cluster: cluster_facts(cluster),
        }
    }
}

fn cluster_facts(cluster: &Cluster) -> ClusterFacts {
    let of = |role| cluster.nodes_with(role).map(node_facts).collect();
    ClusterFacts {
        name: cluster.name.to_string(),
        etcd: of(super::Role::Etcd),
        controlplane: of(super::Role::Controlplane),
        etcd_client_port: cluster.etcd.client_port,
        etcd_peer_port: cluster.etcd.peer_port,
        etcd_pki: super::etcd_pki_dir(cluster.name.as_str()),
    }
}

/// The template context of one cluster's nodes: the cluster's facts are converted once and
/// shared by every node's context.
pub struct Scope {
    cluster: minijinja::Value,
}

impl Scope {
    pub fn new(cluster: &Cluster) -> Scope {
        let facts = cluster_facts(cluster);
        Scope {
            cluster: minijinja::Value::from(minijinja::value::Serde(&facts)),
        }
    }

    /// The context templates see on `node`.
    pub fn node(&self, node: &Node) -> Context {
        let node = minijinja::Value::from(minijinja::value::Serde(&node_facts(node)));
        let pairs = [("node", node), ("cluster", self.cluster.clone())];
        let value = minijinja::Value::from(BTreeMap::from(pairs));
        Context(value)
    }
}

/// What templates see on one node; made by [`Scope::node`].
pub struct Context(minijinja::Value);

impl From<&Facts> for Context {
    fn from(facts: &Facts) -> Context {
        Context(context(facts))
    }
}

fn node_facts(node: &Node) -> NodeFacts {
    NodeFacts {
        name: node.name.to_string(),
        address: node.address.to_string(),
        internal_address: node.internal_address.to_string(),
        roles: node.roles.iter().map(|r| r.to_string()).collect(),
        labels: node.labels.clone(),
    }
}

/// Why a template did not render.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("{0}")]
    Render(String),
    #[error("output is longer than {MAX_RENDERED} characters")]
    TooLong,
}

/// A component's field that failed to render: its path below the component, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub error: TemplateError,
}

/// A component as it runs on one node: every templated field rendered.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedComponent {
    /// The container's fields. Its `files` are empty: they are in `files`, typed.
    pub spec: ComponentSpec,
    /// The component's files with their contents rendered.
    pub files: Vec<ComponentFile>,
}

/// Renders templates; build one and reuse it. Each distinct template is compiled once.
pub struct Renderer {
    env: RefCell<Environment<'static>>,
}

impl Default for Renderer {
    fn default() -> Self {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_fuel(Some(FUEL));
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_recursion_limit(16);
        // File contents must keep their last newline, templated or not.
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .keep_trailing_newline(true)
            .build()
            .expect("the default delimiters are valid");
        env.set_syntax(syntax);
        Renderer {
            env: RefCell::new(env),
        }
    }
}

/// `facts` as the template context.
fn context(facts: &Facts) -> minijinja::Value {
    minijinja::Value::from(minijinja::value::Serde(facts))
}

fn render_error(e: minijinja::Error) -> TemplateError {
    let text = match (e.kind(), e.detail()) {
        (ErrorKind::UndefinedError, _) => format!("{}; {KNOWN_NAMES}", e.kind()),
        (kind, Some(detail)) => format!("{kind}: {detail}"),
        (kind, None) => kind.to_string(),
    };
    TemplateError::Render(text)
}

impl Renderer {
    /// Renders one template. Text without template syntax is returned as it is.
    pub fn render(&self, template: &str, facts: &Facts) -> Result<String, TemplateError> {
        self.render_in(template, &context(facts))
    }

    fn render_in(&self, template: &str, ctx: &minijinja::Value) -> Result<String, TemplateError> {
        if !template.contains("{{") && !template.contains("{%") && !template.contains("{#") {
            return Ok(template.to_string());
        }
        // Templates are named by their own text, so each is compiled once.
        if self.env.borrow().get_template(template).is_err() {
            self.env
                .borrow_mut()
                .add_template_owned(template.to_string(), template.to_string())
                .map_err(render_error)?;
        }
        let env = self.env.borrow();
        let compiled = env.get_template(template).map_err(render_error)?;
        let out = compiled.render(ctx).map_err(render_error)?;
        if out.len() > MAX_RENDERED {
            return Err(TemplateError::TooLong);
        }
        Ok(out)
    }

    /// The component as it runs on the node `ctx` describes: every templated field rendered.
    pub fn component(
        &self,
        component: &Component,
        ctx: &Context,
    ) -> Result<RenderedComponent, FieldError> {
        let mut spec = component.spec.clone();
        spec.files = Vec::new();
        let r = |field: String, s: &mut String| -> Result<(), FieldError> {
            *s = self
                .render_in(s, &ctx.0)
                .map_err(|error| FieldError { field, error })?;
            Ok(())
        };
        if let Some(command) = &mut spec.command {
            for (i, s) in command.iter_mut().enumerate() {
                r(format!("command[{i}]"), s)?;
            }
        }
        for (i, s) in spec.args.iter_mut().enumerate() {
            r(format!("args[{i}]"), s)?;
        }
        for (k, s) in spec.env.iter_mut() {
            r(format!("env.{k}"), s)?;
        }
        for (i, s) in spec.binds.iter_mut().enumerate() {
            r(format!("binds[{i}]"), s)?;
        }
        let mut files = component.files.clone();
        for (i, f) in files.iter_mut().enumerate() {
            r(format!("files[{i}].content"), &mut f.content)?;
        }
        if let Some(h) = &mut spec.health {
            if let Some(s) = &mut h.http {
                r("health.http".into(), s)?;
            }
            if let Some(s) = &mut h.tcp {
                r("health.tcp".into(), s)?;
            }
            if let Some(cmd) = &mut h.exec {
                for (i, s) in cmd.iter_mut().enumerate() {
                    r(format!("health.exec[{i}]"), s)?;
                }
            }
        }
        Ok(RenderedComponent { spec, files })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        let member = |name: &str, addr: &str| NodeFacts {
            name: name.into(),
            address: addr.into(),
            internal_address: addr.into(),
            roles: vec!["etcd".into()],
            labels: BTreeMap::new(),
        };
        Facts {
            node: member("node-1", "127.0.0.2"),
            cluster: ClusterFacts {
                name: "dev".into(),
                etcd: vec![member("node-1", "127.0.0.2"), member("node-2", "127.0.0.3")],
                controlplane: vec![],
                etcd_client_port: 2379,
                etcd_peer_port: 2380,
                etcd_pki: "/var/lib/drover/dev/etcd-pki".into(),
            },
        }
    }

    #[test]
    fn renders_node_and_cluster_facts() {
        let r = Renderer::default();
        let f = facts();
        let cases = [
            ("plain text", "plain text"),
            ("{{ node.address }}:8080", "127.0.0.2:8080"),
            (
                "{% for m in cluster.etcd %}https://{{ m.address }}:{{ cluster.etcdClientPort }}{% if not loop.last %},{% endif %}{% endfor %}",
                "https://127.0.0.2:2379,https://127.0.0.3:2379",
            ),
            ("<{{ cluster.name }}&>", "<dev&>"),
            ("line {{ node.name }}\n", "line node-1\n"),
        ];
        for (template, want) in cases {
            assert_eq!(r.render(template, &f).unwrap(), want, "{template}");
        }
    }

    #[test]
    fn undefined_names_and_syntax_errors_fail() {
        let r = Renderer::default();
        let f = facts();
        for bad in [
            "{{ node.adress }}",
            "{{ nodes }}",
            "{{ node.address ",
            "{% for %}",
        ] {
            assert!(
                matches!(r.render(bad, &f), Err(TemplateError::Render(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn runaway_templates_are_stopped() {
        let r = Renderer::default();
        let f = facts();
        let looping =
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}";
        assert!(r.render(looping, &f).is_err());
        let long = "{{ 'x' * 100000 }}";
        assert!(r.render(long, &f).is_err());
    }
}
