//! Puts the objects of all files together and checks what spans files (duplicate names).

use crate::diagnostics::{Diagnostic, Severity};
use crate::load::{Object, ParsedFile};
use crate::model::{Catalog, GroupKind};
use std::collections::BTreeSet;

/// The catalog of valid objects, all diagnostics, and the files that had errors (whose objects
/// are not in the catalog: the caller decides what stays in force for them).
#[derive(Debug, Clone, Default)]
pub struct Assembled {
    pub catalog: Catalog,
    pub diagnostics: Vec<Diagnostic>,
    pub broken_files: BTreeSet<String>,
}

impl Assembled {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

/// Assembles files in path order; on a duplicate the first definition wins and the later one
/// is reported.
pub fn assemble<'a>(files: impl IntoIterator<Item = &'a ParsedFile>) -> Assembled {
    let mut out = Assembled::default();
    let mut pod_sources: std::collections::BTreeMap<
        crate::model::ObjectKey,
        crate::model::SourceRef,
    > = std::collections::BTreeMap::new();
    for file in files {
        out.diagnostics.extend(file.diagnostics.iter().cloned());
        if file.has_errors() {
            out.broken_files.insert(file.path.clone());
            continue;
        }
        for object in &file.objects {
            match object {
                Object::Service(service) => {
                    if let Some(first) = out.catalog.services.get(&service.key) {
                        out.diagnostics.push(Diagnostic {
                            file: service.source.file.clone(),
                            line: service.source.line,
                            severity: Severity::Error,
                            object: Some(format!("Service `{}`", service.key)),
                            field: Some("metadata.name".into()),
                            message: format!(
                                "duplicate service: already defined at {}",
                                first.source
                            ),
                        });
                        continue;
                    }
                    out.catalog
                        .services
                        .insert(service.key.clone(), service.clone());
                }
                Object::Endpoints(group) => out.catalog.endpoint_groups.push(group.clone()),
                Object::Pod(pod) => {
                    if let Some(first) = pod_sources.get(&pod.key) {
                        out.diagnostics.push(Diagnostic {
                            file: pod.source.file.clone(),
                            line: pod.source.line,
                            severity: Severity::Warning,
                            object: Some(format!("Pod `{}`", pod.key)),
                            field: Some("metadata.name".into()),
                            message: format!(
                                "duplicate pod: already defined at {first}; this one is ignored"
                            ),
                        });
                        continue;
                    }
                    pod_sources.insert(pod.key.clone(), pod.source.clone());
                    out.catalog.pods.push(pod.clone());
                }
            }
        }
    }
    ignore_replaced_groups(&mut out);
    out.diagnostics.sort();
    out
}

/// A Service with a selector takes its endpoints from the Pods it selects: on a cluster the
/// endpoints controllers own its v1 Endpoints object and its controller-managed slices and
/// rewrite them from the Pods, so a hand-written one would not last. They are ignored with a
/// warning naming both files. Slices managed by anyone else are kept: kube-proxy merges every
/// slice labelled with the service's name.
fn ignore_replaced_groups(out: &mut Assembled) {
    let services = &out.catalog.services;
    let mut warned = BTreeSet::new();
    out.catalog.endpoint_groups.retain(|group| {
        let Some(service) = services.get(&group.service) else {
            return true;
        };
        let selects = service.selector.as_ref().is_some_and(|s| !s.is_empty());
        if !selects || group.kind == GroupKind::EndpointSlice {
            return true;
        }
        if warned.insert(group.source.clone()) {
            let (object, what) = match group.kind {
                GroupKind::Endpoints => (
                    format!("Endpoints `{}`", group.service),
                    "the endpoints controller",
                ),
                _ => (
                    format!("EndpointSlice for `{}`", group.service),
                    "the EndpointSlice controller",
                ),
            };
            out.diagnostics.push(Diagnostic {
                file: group.source.file.clone(),
                line: group.source.line,
                severity: Severity::Warning,
                object: Some(object),
                field: None,
                message: format!(
                    "ignored: Service `{}` ({}) has a selector, so its endpoints come from the Pods it selects ({what} would replace this object on a cluster)",
                    group.service, service.source
                ),
            });
        }
        false
    });
}
