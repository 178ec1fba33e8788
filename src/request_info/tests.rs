use super::*;

/// An `Error` variant, to be given the path it names.
type Refusal = fn(String) -> Error;

/// The expected outcome of one table row; `path` defaults to the row's path without the query.
struct Want {
    info: RequestInfo,
    /// Go's `Parts`.
    parts: Vec<&'static str>,
    path: Option<&'static str>,
}

impl Want {
    /// Go sets the prefix of `/apis/{group}/{version}` although it is no resource request.
    fn apis(mut self) -> Self {
        self.info.api_prefix = "apis".into();
        self
    }

    /// The normalised path, where it differs from the request's.
    fn at(mut self, path: &'static str) -> Self {
        self.path = Some(path);
        self
    }
}

/// A resource request: verb, prefix, group, version, namespace, resource, subresource, name,
/// parts (the order of Go's table).
#[allow(clippy::too_many_arguments)]
fn res(
    verb: &str,
    api_prefix: &str,
    api_group: &str,
    api_version: &str,
    namespace: &str,
    resource: &str,
    subresource: &str,
    name: &str,
    parts: &[&'static str],
) -> Want {
    Want {
        info: RequestInfo {
            is_resource_request: true,
            path: String::new(),
            verb: verb.into(),
            api_prefix: api_prefix.into(),
            api_group: api_group.into(),
            api_version: api_version.into(),
            namespace: namespace.into(),
            resource: resource.into(),
            subresource: subresource.into(),
            name: name.into(),
            parts_at: None,
        },
        parts: parts.to_vec(),
        path: None,
    }
}

/// A non-resource request with the given verb.
fn non(verb: &str) -> Want {
    Want {
        info: RequestInfo {
            verb: verb.into(),
            ..RequestInfo::default()
        },
        parts: Vec::new(),
        path: None,
    }
}

fn run(method: &str, path_and_query: &str) -> (Uri, Result<RequestInfo, Error>) {
    let method = Method::from_bytes(method.as_bytes()).expect("valid method");
    let uri = Uri::builder()
        .path_and_query(path_and_query)
        .build()
        .expect("valid uri");
    let got = resolve(&method, &uri);
    (uri, got)
}

#[rustfmt::skip]
fn table() -> Vec<(&'static str, &'static str, Want)> {
    vec![
        // resource requests (Go: TestGetAPIRequestInfo)
        ("GET", "/api/v1/namespaces", res("list", "api", "", "v1", "", "namespaces", "", "", &["namespaces"])),
        ("GET", "/api/v1/namespaces/other", res("get", "api", "", "v1", "other", "namespaces", "", "other", &["namespaces", "other"])),
        ("GET", "/api/v1/namespaces/other/pods", res("list", "api", "", "v1", "other", "pods", "", "", &["pods"])),
        ("GET", "/api/v1/namespaces/other/pods/foo", res("get", "api", "", "v1", "other", "pods", "", "foo", &["pods", "foo"])),
        ("HEAD", "/api/v1/namespaces/other/pods/foo", res("get", "api", "", "v1", "other", "pods", "", "foo", &["pods", "foo"])),
        ("GET", "/api/v1/pods", res("list", "api", "", "v1", "", "pods", "", "", &["pods"])),
        ("HEAD", "/api/v1/pods", res("list", "api", "", "v1", "", "pods", "", "", &["pods"])),
        // An older revision of Go's table; the current code sets the namespace to the name.
        ("PATCH", "/api/v1/namespaces/new-namespace", res("patch", "api", "", "v1", "new-namespace", "namespaces", "", "new-namespace", &["namespaces", "new-namespace"])),

        // special verbs
        ("GET", "/api/v1/proxy/namespaces/other/pods/foo", res("proxy", "api", "", "v1", "other", "pods", "", "foo", &["pods", "foo"])),
        ("GET", "/api/v1/proxy/namespaces/other/pods/foo/subpath/not/a/subresource", res("proxy", "api", "", "v1", "other", "pods", "", "foo", &["pods", "foo", "subpath", "not", "a", "subresource"])),
        ("GET", "/api/v1/watch/pods", res("watch", "api", "", "v1", "", "pods", "", "", &["pods"])),
        ("GET", "/api/v1/pods?watch=true", res("watch", "api", "", "v1", "", "pods", "", "", &["pods"])),
        ("GET", "/api/v1/pods?watch=false", res("list", "api", "", "v1", "", "pods", "", "", &["pods"])),
        ("GET", "/api/v1/watch/namespaces/other/pods", res("watch", "api", "", "v1", "other", "pods", "", "", &["pods"])),
        ("GET", "/api/v1/namespaces/other/pods?watch=1", res("watch", "api", "", "v1", "other", "pods", "", "", &["pods"])),
        ("GET", "/api/v1/namespaces/other/pods?watch=0", res("list", "api", "", "v1", "other", "pods", "", "", &["pods"])),
        ("GET", "/api/v1/watch/namespaces/other/pods/foo", res("watch", "api", "", "v1", "other", "pods", "", "foo", &["pods", "foo"])),
        ("GET", "/api/v1/watch/namespaces/other", res("watch", "api", "", "v1", "other", "namespaces", "", "other", &["namespaces", "other"])),
        ("POST", "/api/v1/watch/pods", res("watch", "api", "", "v1", "", "pods", "", "", &["pods"])),
        ("GET", "/api/v1/proxy/nodes/node-1/stats/summary", res("proxy", "api", "", "v1", "", "nodes", "", "node-1", &["nodes", "node-1", "stats", "summary"])),
        ("GET", "/apis/apps/v1/watch/namespaces/other/deployments", res("watch", "apis", "apps", "v1", "other", "deployments", "", "", &["deployments"])),
        // only right after the version is "watch" a verb
        ("GET", "/api/v1/namespaces/other/watch/pods", res("get", "api", "", "v1", "other", "watch", "", "pods", &["watch", "pods"])),

        // subresources
        ("GET", "/api/v1/namespaces/other/pods/foo/status", res("get", "api", "", "v1", "other", "pods", "status", "foo", &["pods", "foo", "status"])),
        ("GET", "/api/v1/namespaces/other/pods/foo/proxy/subpath", res("get", "api", "", "v1", "other", "pods", "proxy", "foo", &["pods", "foo", "proxy", "subpath"])),
        ("PUT", "/api/v1/namespaces/other/finalize", res("update", "api", "", "v1", "other", "namespaces", "finalize", "other", &["namespaces", "other", "finalize"])),
        ("PUT", "/api/v1/namespaces/other/status", res("update", "api", "", "v1", "other", "namespaces", "status", "other", &["namespaces", "other", "status"])),
        ("GET", "/api/v1/namespaces/other/status/extra", res("get", "api", "", "v1", "other", "namespaces", "status", "other", &["namespaces", "other", "status", "extra"])),
        ("GET", "/api/v1/namespaces/default/pods/nginx-1/log?container=app&follow=true", res("get", "api", "", "v1", "default", "pods", "log", "nginx-1", &["pods", "nginx-1", "log"])),
        ("POST", "/api/v1/namespaces/default/pods/nginx-1/exec?command=ls&stdout=true", res("create", "api", "", "v1", "default", "pods", "exec", "nginx-1", &["pods", "nginx-1", "exec"])),
        ("GET", "/api/v1/namespaces/default/pods/nginx-1/exec?command=sh", res("get", "api", "", "v1", "default", "pods", "exec", "nginx-1", &["pods", "nginx-1", "exec"])),
        ("POST", "/api/v1/namespaces/default/pods/nginx-1/attach", res("create", "api", "", "v1", "default", "pods", "attach", "nginx-1", &["pods", "nginx-1", "attach"])),
        ("POST", "/api/v1/namespaces/default/pods/nginx-1/portforward?ports=8080", res("create", "api", "", "v1", "default", "pods", "portforward", "nginx-1", &["pods", "nginx-1", "portforward"])),
        ("POST", "/api/v1/namespaces/default/pods/nginx-1/eviction", res("create", "api", "", "v1", "default", "pods", "eviction", "nginx-1", &["pods", "nginx-1", "eviction"])),
        ("GET", "/apis/apps/v1/namespaces/default/deployments/web/scale", res("get", "apis", "apps", "v1", "default", "deployments", "scale", "web", &["deployments", "web", "scale"])),
        ("PATCH", "/apis/apps/v1/namespaces/default/deployments/web/status", res("patch", "apis", "apps", "v1", "default", "deployments", "status", "web", &["deployments", "web", "status"])),
        ("GET", "/api/v1/namespaces/default/services/https:web:443/proxy/metrics/cpu", res("get", "api", "", "v1", "default", "services", "proxy", "https:web:443", &["services", "https:web:443", "proxy", "metrics", "cpu"])),
        ("GET", "/api/v1/nodes/node-1/proxy/stats", res("get", "api", "", "v1", "", "nodes", "proxy", "node-1", &["nodes", "node-1", "proxy", "stats"])),
        // more segments than the resolver keeps on the stack
        ("GET", "/api/v1/namespaces/default/services/web/proxy/a/b/c/d/e/f/g/h", res("get", "api", "", "v1", "default", "services", "proxy", "web", &["services", "web", "proxy", "a", "b", "c", "d", "e", "f", "g", "h"])),
        ("GET", "/apis/apps/v1/proxy/namespaces/default/pods/web/1/2/3/4/5/6/7/8/9", res("proxy", "apis", "apps", "v1", "default", "pods", "", "web", &["pods", "web", "1", "2", "3", "4", "5", "6", "7", "8", "9"])),

        // verb identification
        ("PATCH", "/api/v1/namespaces/other/pods/foo", res("patch", "api", "", "v1", "other", "pods", "", "foo", &["pods", "foo"])),
        ("DELETE", "/api/v1/namespaces/other/pods/foo", res("delete", "api", "", "v1", "other", "pods", "", "foo", &["pods", "foo"])),
        ("POST", "/api/v1/namespaces/other/pods", res("create", "api", "", "v1", "other", "pods", "", "", &["pods"])),
        ("PUT", "/apis/apps/v1/namespaces/other/deployments/web", res("update", "apis", "apps", "v1", "other", "deployments", "", "web", &["deployments", "web"])),
        ("POST", "/api/v1/namespaces", res("create", "api", "", "v1", "", "namespaces", "", "", &["namespaces"])),
        // any other method has no verb on a resource path; Go compares methods case-sensitively
        ("OPTIONS", "/api/v1/namespaces/other/pods", res("", "api", "", "v1", "other", "pods", "", "", &["pods"])),
        ("get", "/api/v1/namespaces/other/pods", res("", "api", "", "v1", "other", "pods", "", "", &["pods"])),
        ("CONNECT", "/api/v1/namespaces/other/pods/foo", res("", "api", "", "v1", "other", "pods", "", "foo", &["pods", "foo"])),

        // deletecollection verb identification
        ("DELETE", "/api/v1/nodes", res("deletecollection", "api", "", "v1", "", "nodes", "", "", &["nodes"])),
        ("DELETE", "/api/v1/namespaces", res("deletecollection", "api", "", "v1", "", "namespaces", "", "", &["namespaces"])),
        ("DELETE", "/api/v1/namespaces/other/pods", res("deletecollection", "api", "", "v1", "other", "pods", "", "", &["pods"])),
        // Go's table says prefix "api" here but never checks it; the prefix is "apis".
        ("DELETE", "/apis/extensions/v1/namespaces/other/pods", res("deletecollection", "apis", "extensions", "v1", "other", "pods", "", "", &["pods"])),
        // a metadata.name field selector names nothing on a delete
        ("DELETE", "/api/v1/namespaces/other/pods?fieldSelector=metadata.name%3Dfoo", res("deletecollection", "api", "", "v1", "other", "pods", "", "", &["pods"])),

        // api group and version identification
        ("POST", "/apis/extensions/v1/namespaces/other/pods", res("create", "apis", "extensions", "v1", "other", "pods", "", "", &["pods"])),
        ("POST", "/apis/extensions/v1beta3/namespaces/other/pods", res("create", "apis", "extensions", "v1beta3", "other", "pods", "", "", &["pods"])),

        // resource or not (Go: TestGetNonAPIRequestInfo)
        ("GET", "/api/version/resource", res("list", "api", "", "version", "", "resource", "", "", &["resource"])),
        ("GET", "/apis/group/version/resource/name/subresource", res("get", "apis", "group", "version", "", "resource", "subresource", "name", &["resource", "name", "subresource"])),
        ("GET", "/api/version/resource/name/subresource", res("get", "api", "", "version", "", "resource", "subresource", "name", &["resource", "name", "subresource"])),
        ("GET", "/apis/batch/v1/job", res("list", "apis", "batch", "v1", "", "job", "", "", &["job"])),
        ("GET", "/apis/batch/v1/job/foo", res("get", "apis", "batch", "v1", "", "job", "", "foo", &["job", "foo"])),
        ("GET", "/apis/batch/v1/job/foo/scale", res("get", "apis", "batch", "v1", "", "job", "scale", "foo", &["job", "foo", "scale"])),

        // non-resource (Go: TestGetNonAPIRequestInfo and the error cases of TestGetAPIRequestInfo)
        ("GET", "/not-api/version/resource", non("get")),
        ("GET", "/apis/extensions/v1beta1", non("get").apis()),
        ("GET", "/apis/extensions/v1beta1/", non("get").apis()),
        ("GET", "/api/version", non("get")),
        ("GET", "/api", non("get")),
        ("GET", "/", non("get")),
        ("GET", "/api/version/", non("get")),
        ("GET", "/apis/group/version/", non("get").apis()),
        ("GET", "/badprefix/version/resource", non("get")),
        ("GET", "/apis/version/resource", non("get").apis()),
        ("GET", "/apis", non("get")),
        ("GET", "/apis/apps", non("get")),
        ("GET", "/apis/apps/v1", non("get").apis()),
        ("GET", "/api/v1", non("get")),
        ("GET", "/version", non("get")),
        ("GET", "/healthz", non("get")),
        ("GET", "/healthz/", non("get")),
        ("GET", "/readyz?verbose", non("get")),
        ("GET", "/openapi/v2", non("get")),
        ("GET", "/.well-known/openid-configuration", non("get")),
        ("HEAD", "/healthz", non("head")),
        ("POST", "/api/v1", non("post")),
        ("OPTIONS", "/healthz", non("options")),
        ("get", "/healthz", non("get")),
        ("PROPFIND", "/metrics", non("propfind")),

        // fieldSelector name (Go: TestSelectorParsing, TestFieldSelectorParsing)
        ("GET", "/apis/group/version/resource", res("list", "apis", "group", "version", "", "resource", "", "", &["resource"])),
        ("GET", "/apis/group/version/resource?fieldSelector=metadata.name=name1", res("list", "apis", "group", "version", "", "resource", "", "name1", &["resource"])),
        ("GET", "/apis/group/version/resource?watch=true&fieldSelector=metadata.name=name1", res("watch", "apis", "group", "version", "", "resource", "", "name1", &["resource"])),
        ("GET", "/apis/group/version/resource?fieldSelector=foo=bar", res("list", "apis", "group", "version", "", "resource", "", "", &["resource"])),
        ("GET", "/apis/group/version/resource?fieldSelector=foo=bar&labelSelector=baz=qux", res("list", "apis", "group", "version", "", "resource", "", "", &["resource"])),
        ("GET", "/apis/group/version/resource?fieldSelector=metadata.name=name1,foo", res("list", "apis", "group", "version", "", "resource", "", "", &["resource"])),
        ("GET", "/apis/group/version/resource?fieldSelector=metadata.name=name1,foo&watch=true", res("watch", "apis", "group", "version", "", "resource", "", "", &["resource"])),
        ("GET", "/apis/group/version/resource?fieldSelector=metadata.name=name1,foo&watch=false", res("list", "apis", "group", "version", "", "resource", "", "", &["resource"])),
        ("DELETE", "/apis/group/version/resource?fieldSelector=foo=bar&labelSelector=baz=qux", res("deletecollection", "apis", "group", "version", "", "resource", "", "", &["resource"])),
        ("GET", "/apis/group/version/resource?fieldSelector=metadata.name=foo&fieldSelector=metadata.name=bar&labelSelector=foo=bar&labelSelector=foo=baz", res("list", "apis", "group", "version", "", "resource", "", "foo", &["resource"])),
        ("GET", "/apis/group/version/resource/name?fieldSelector=foo=bar&labelSelector=foo=bar", res("get", "apis", "group", "version", "", "resource", "", "name", &["resource", "name"])),
        ("GET", "/apis/group/version/watch/resource?fieldSelector=metadata.name=foo&labelSelector=foo=bar", res("watch", "apis", "group", "version", "", "resource", "", "", &["resource"])),
        ("GET", "/apis/group/version/watch/resource/name?fieldSelector=metadata.name=foo&labelSelector=foo=bar", res("watch", "apis", "group", "version", "", "resource", "", "name", &["resource", "name"])),
        // ours: operators, escapes, term order, names that are not path segments
        ("GET", "/api/v1/namespaces/ns/secrets?fieldSelector=metadata.name%3D%3Dtoken", res("list", "api", "", "v1", "ns", "secrets", "", "token", &["secrets"])),
        ("GET", "/api/v1/namespaces/ns/secrets?fieldSelector=metadata.name!%3Dtoken", res("list", "api", "", "v1", "ns", "secrets", "", "", &["secrets"])),
        ("GET", "/api/v1/namespaces/ns/secrets?fieldSelector=metadata.name%3Db,metadata.name%3Da", res("list", "api", "", "v1", "ns", "secrets", "", "a", &["secrets"])),
        ("GET", "/api/v1/namespaces/ns/secrets?fieldSelector=metadata.name!%3Da,metadata.name%3Db", res("list", "api", "", "v1", "ns", "secrets", "", "b", &["secrets"])),
        ("GET", "/api/v1/namespaces/ns/secrets?fieldSelector=type%3Dopaque,metadata.name%3Dx", res("list", "api", "", "v1", "ns", "secrets", "", "x", &["secrets"])),
        ("GET", "/api/v1/namespaces/ns/secrets?fieldSelector=metadata.name%3Da%5C,b", res("list", "api", "", "v1", "ns", "secrets", "", "a,b", &["secrets"])),
        ("GET", "/api/v1/namespaces/ns/secrets?fieldSelector=metadata.name%3Da%5Cb", res("list", "api", "", "v1", "ns", "secrets", "", "", &["secrets"])),
        ("GET", "/api/v1/namespaces/ns/secrets?fieldSelector=metadata.name%3D..", res("list", "api", "", "v1", "ns", "secrets", "", "", &["secrets"])),
        ("GET", "/api/v1/namespaces/ns/secrets?fieldSelector=metadata.name%3Da%2Fb", res("list", "api", "", "v1", "ns", "secrets", "", "", &["secrets"])),
        ("GET", "/api/v1/namespaces/ns/secrets?fieldSelector=metadata.name%3Da%25b", res("list", "api", "", "v1", "ns", "secrets", "", "", &["secrets"])),
        ("GET", "/api/v1/namespaces/ns/secrets?fieldSelector=metadata.name%3D%FF", res("list", "api", "", "v1", "ns", "secrets", "", "", &["secrets"])),
        ("GET", "/api/v1/namespaces/ns/secrets?fieldSelector=metadata.name%3Da+b", res("list", "api", "", "v1", "ns", "secrets", "", "a b", &["secrets"])),
        ("GET", "/api/v1/namespaces/ns/secrets?field%53elector=metadata.name%3Dx", res("list", "api", "", "v1", "ns", "secrets", "", "x", &["secrets"])),
        // a pair with ';' or a bad escape is dropped by Go's query parser
        ("GET", "/api/v1/namespaces/ns/secrets?fieldSelector=metadata.name%3Dx;y", res("list", "api", "", "v1", "ns", "secrets", "", "", &["secrets"])),
        ("GET", "/api/v1/namespaces/ns/secrets?fieldSelector=metadata.name%3Dx%zz", res("list", "api", "", "v1", "ns", "secrets", "", "", &["secrets"])),

        // list options that must decode for the name to count
        ("GET", "/api/v1/namespaces/ns/pods?fieldSelector=metadata.name%3Dx&limit=500&timeoutSeconds=30", res("list", "api", "", "v1", "ns", "pods", "", "x", &["pods"])),
        ("GET", "/api/v1/namespaces/ns/pods?fieldSelector=metadata.name%3Dx&limit=many", res("list", "api", "", "v1", "ns", "pods", "", "", &["pods"])),
        ("GET", "/api/v1/namespaces/ns/pods?fieldSelector=metadata.name%3Dx&timeoutSeconds=30s", res("list", "api", "", "v1", "ns", "pods", "", "", &["pods"])),
        ("GET", "/api/v1/namespaces/ns/pods?fieldSelector=metadata.name%3Dx&labelSelector=env+in+(prod,,dev),!canary,tier,app.kubernetes.io/name%3D%3Dweb", res("list", "api", "", "v1", "ns", "pods", "", "x", &["pods"])),
        ("GET", "/api/v1/namespaces/ns/pods?fieldSelector=metadata.name%3Dx&labelSelector=replicas%3E5,zone+notin+()", res("list", "api", "", "v1", "ns", "pods", "", "x", &["pods"])),
        ("GET", "/api/v1/namespaces/ns/pods?fieldSelector=metadata.name%3Dx&labelSelector=replicas%3Efive", res("list", "api", "", "v1", "ns", "pods", "", "", &["pods"])),
        ("GET", "/api/v1/namespaces/ns/pods?fieldSelector=metadata.name%3Dx&labelSelector=!!app", res("list", "api", "", "v1", "ns", "pods", "", "", &["pods"])),
        ("GET", "/api/v1/namespaces/ns/pods?fieldSelector=metadata.name%3Dx&labelSelector=app%3D-web", res("list", "api", "", "v1", "ns", "pods", "", "", &["pods"])),
        ("GET", "/api/v1/namespaces/ns/pods?fieldSelector=metadata.name%3Dx&labelSelector=Example.com/app", res("list", "api", "", "v1", "ns", "pods", "", "", &["pods"])),
        ("GET", "/api/v1/namespaces/ns/pods?fieldSelector=metadata.name%3Dx&labelSelector=app%3Dweb,", res("list", "api", "", "v1", "ns", "pods", "", "", &["pods"])),
        // a NUL where a token starts ends a label selector in Go's lexer
        ("GET", "/api/v1/namespaces/ns/pods?fieldSelector=metadata.name%3Dx&labelSelector=app+%00!!!", res("list", "api", "", "v1", "ns", "pods", "", "x", &["pods"])),

        // watch parameter: anything but "0" and "false" (any case) is true
        ("GET", "/api/v1/pods?watch", res("watch", "api", "", "v1", "", "pods", "", "", &["pods"])),
        ("GET", "/api/v1/pods?watch=", res("watch", "api", "", "v1", "", "pods", "", "", &["pods"])),
        ("GET", "/api/v1/pods?watch=yes", res("watch", "api", "", "v1", "", "pods", "", "", &["pods"])),
        ("GET", "/api/v1/pods?watch=FALSE", res("list", "api", "", "v1", "", "pods", "", "", &["pods"])),
        ("GET", "/api/v1/pods?watch=%30", res("list", "api", "", "v1", "", "pods", "", "", &["pods"])),
        ("GET", "/api/v1/pods?watch=+0", res("watch", "api", "", "v1", "", "pods", "", "", &["pods"])),
        ("GET", "/api/v1/pods?watch=0&watch=1", res("list", "api", "", "v1", "", "pods", "", "", &["pods"])),
        ("GET", "/api/v1/pods?watch=1;x", res("list", "api", "", "v1", "", "pods", "", "", &["pods"])),
        // "falſe" folds to "false" when the options decode, but not in Go's fallback
        ("GET", "/api/v1/pods?watch=fal%C5%BFe", res("list", "api", "", "v1", "", "pods", "", "", &["pods"])),
        ("GET", "/api/v1/pods?watch=fal%C5%BFe&limit=x", res("watch", "api", "", "v1", "", "pods", "", "", &["pods"])),
        ("GET", "/api/v1/namespaces/default/pods/nginx-1?watch=true", res("get", "api", "", "v1", "default", "pods", "", "nginx-1", &["pods", "nginx-1"])),

        // normalisation
        ("GET", "//api//v1/namespaces/kube-system/secrets", res("list", "api", "", "v1", "kube-system", "secrets", "", "", &["secrets"]).at("/api/v1/namespaces/kube-system/secrets")),
        ("GET", "/api/v1/namespaces/default/pods/../secrets/x", res("get", "api", "", "v1", "default", "secrets", "", "x", &["secrets", "x"]).at("/api/v1/namespaces/default/secrets/x")),
        ("GET", "/api/v1/namespaces/default/pods/%2e%2E/secrets", res("list", "api", "", "v1", "default", "secrets", "", "", &["secrets"]).at("/api/v1/namespaces/default/secrets")),
        ("GET", "/api/v1/./pods", res("list", "api", "", "v1", "", "pods", "", "", &["pods"]).at("/api/v1/pods")),
        ("GET", "/apis/apps/v1/../../../api/v1/pods", res("list", "api", "", "v1", "", "pods", "", "", &["pods"]).at("/api/v1/pods")),
        ("GET", "/api/v1/namespaces/default/pods/", res("list", "api", "", "v1", "default", "pods", "", "", &["pods"])),
        ("GET", "/api/v1/namespaces/default/pods/foo/..", res("list", "api", "", "v1", "default", "pods", "", "", &["pods"]).at("/api/v1/namespaces/default/pods/")),
        ("GET", "/api/v1/namespaces/de%66ault/pods", res("list", "api", "", "v1", "default", "pods", "", "", &["pods"]).at("/api/v1/namespaces/default/pods")),
        ("GET", "/api/v1/namespaces/default/configmaps/a%20b", res("get", "api", "", "v1", "default", "configmaps", "", "a b", &["configmaps", "a b"]).at("/api/v1/namespaces/default/configmaps/a b")),
        ("GET", "/api/v1/namespaces/default/configmaps/%C3%A9t%C3%A9", res("get", "api", "", "v1", "default", "configmaps", "", "été", &["configmaps", "été"]).at("/api/v1/namespaces/default/configmaps/été")),
        ("GET", "/api/v1/namespaces/default/configmaps/a%3Fb%23c", res("get", "api", "", "v1", "default", "configmaps", "", "a?b#c", &["configmaps", "a?b#c"]).at("/api/v1/namespaces/default/configmaps/a?b#c")),
        ("GET", "/api/v1/namespaces/default/configmaps/100%25", res("get", "api", "", "v1", "default", "configmaps", "", "100%", &["configmaps", "100%"]).at("/api/v1/namespaces/default/configmaps/100%")),
        ("GET", "/api/v1/namespaces/default/configmaps/a+b", res("get", "api", "", "v1", "default", "configmaps", "", "a+b", &["configmaps", "a+b"])),
        ("GET", "/healthz/./", non("get").at("/healthz/")),
        ("GET", "/healthz/..", non("get").at("/")),
        ("GET", "/a/b/../../", non("get").at("/")),
    ]
}

#[test]
fn resolves_like_the_api_server() {
    let rows = table();
    assert!(rows.len() >= 60, "{} rows", rows.len());
    for (method, path_and_query, want) in rows {
        let mut want_info = want.info;
        let request_path = path_and_query.split('?').next().unwrap_or_default();
        want_info.path = want.path.unwrap_or(request_path).to_owned();
        let (_, got) = run(method, path_and_query);
        // Go's parts, then every other attribute.
        let got = got.map(|info| {
            assert_eq!(info.parts(), want.parts, "{method} {path_and_query}");
            RequestInfo {
                parts_at: None,
                ..info
            }
        });
        assert_eq!(got, Ok(want_info), "{method} {path_and_query}");
    }
}

#[test]
fn refuses_ambiguous_paths() {
    let rows: &[(&str, Refusal)] = &[
        (
            "/api/v1/namespaces/default/pods/..%2F..%2Fsecrets",
            Error::EncodedSlash,
        ),
        ("/api/v1/pods/a%2fb", Error::EncodedSlash),
        ("/api/v1/pods/a%5Cb", Error::Backslash),
        ("/api/v1/pods/a%5cb", Error::Backslash),
        ("/api/v1/pods/a\\b", Error::Backslash),
        ("/api/v1/pods/%zz", Error::InvalidPercentEscape),
        ("/api/v1/pods/%4", Error::InvalidPercentEscape),
        ("/api/v1/pods/%", Error::InvalidPercentEscape),
        ("/api/v1/pods/%%41", Error::InvalidPercentEscape),
        ("/api/v1/pods/%00", Error::ControlCharacter),
        ("/api/v1/pods/a%0Ab", Error::ControlCharacter),
        ("/api/v1/pods/a%0d%0aHost:x", Error::ControlCharacter),
        ("/api/v1/pods/%7F", Error::ControlCharacter),
        ("/api/v1/pods/%FF", Error::InvalidUtf8),
        ("/api/v1/pods/%C3", Error::InvalidUtf8),
        ("/api/v1/pods/%C0%AF", Error::InvalidUtf8),
        // refused even though a later ".." would remove the segment
        ("/%FF/../api/v1/pods", Error::InvalidUtf8),
        ("/x%00/../api/v1/pods", Error::ControlCharacter),
        ("/..", Error::AboveRoot),
        ("/api/../../etc", Error::AboveRoot),
        ("/%2e%2e/api/v1/pods", Error::AboveRoot),
        ("*", Error::NotAbsolute),
    ];
    for (path, variant) in rows {
        let (_, got) = run("GET", path);
        assert_eq!(got, Err(variant((*path).to_owned())), "GET {path}");
    }
    // special verbs with nothing after them fail in Go too (with a 500)
    for (path, normalised) in [
        ("/api/v1/watch", "/api/v1/watch"),
        ("/api/v1/proxy/", "/api/v1/proxy/"),
        ("/apis/apps/v1/proxy", "/apis/apps/v1/proxy"),
        ("/apis/apps/v1//watch", "/apis/apps/v1/watch"),
    ] {
        let (_, got) = run("GET", path);
        assert_eq!(
            got,
            Err(Error::MissingResource(normalised.to_owned())),
            "GET {path}"
        );
    }
    // recent Go releases parse no parameter of a query with more than 10000 of them
    let query = "&".repeat(9_999);
    let (_, got) = run("GET", &format!("/api/v1/pods?{query}watch=1"));
    assert_eq!(got.map(|info| info.verb), Ok("watch".to_owned()));
    let (_, got) = run("GET", &format!("/api/v1/pods?{query}&watch=1"));
    assert_eq!(got, Err(Error::TooManyQueryParameters(10_001)));
    // Go's table has an empty URL (a non-resource request there); an http::Uri can't be
    // empty, and an empty path (authority-form) is refused.
    assert_eq!(normalize_path(""), Err(Error::NotAbsolute(String::new())));
    assert_eq!(
        normalize_path("api/v1"),
        Err(Error::NotAbsolute("api/v1".into()))
    );
}

#[test]
fn error_messages_are_lower_case_and_name_the_path() {
    let err = normalize_path("/a%2Fb").expect_err("encoded slash");
    assert_eq!(
        err.to_string(),
        "path contains an encoded slash: \"/a%2Fb\""
    );
    let err = normalize_path("/a%0Ab").expect_err("control character");
    assert_eq!(
        err.to_string(),
        "path contains a control character: \"/a%0Ab\""
    );
}

#[test]
fn normalizes_paths() {
    let rows = [
        ("/", "/"),
        ("//", "/"),
        ("///", "/"),
        ("/a", "/a"),
        ("/a/", "/a/"),
        ("//a//b//", "/a/b/"),
        ("/a/./b", "/a/b"),
        ("/a/.", "/a/"),
        ("/.", "/"),
        ("/a/..", "/"),
        ("/a/b/..", "/a/"),
        ("/a/b/../c", "/a/c"),
        ("/a/b/../../c/", "/c/"),
        ("/a/%2e/b", "/a/b"),
        ("/a/%2E%2E/b", "/b"),
        ("/a/.../b", "/a/.../b"),
        ("/a/..b/.c", "/a/..b/.c"),
        ("/%61pi/%76%31", "/api/v1"),
        ("/a%20b", "/a b"),
        ("/%C3%A9", "/é"),
        ("/é", "/é"),
        ("/a+b", "/a+b"),
        ("/a%2Bb", "/a+b"),
        ("/a%3Fb", "/a?b"),
        ("/a%25b", "/a%b"),
        ("/a%2541", "/a%41"),
        ("/a;b=c", "/a;b=c"),
    ];
    for (raw, want) in rows {
        assert_eq!(normalize_path(raw), Ok(want.to_owned()), "{raw}");
    }
}

#[test]
fn forwards_what_was_authorised() {
    let rows = [
        (
            "/api/v1/namespaces/default/pods/nginx-1?timeout=30s",
            "/api/v1/namespaces/default/pods/nginx-1?timeout=30s",
        ),
        (
            "//api//v1/./namespaces/kube-system/secrets?watch=1&x=%2F",
            "/api/v1/namespaces/kube-system/secrets?watch=1&x=%2F",
        ),
        (
            "/api/v1/namespaces/default/pods/../secrets/x",
            "/api/v1/namespaces/default/secrets/x",
        ),
        (
            "/api/v1/namespaces/default/configmaps/a%20b",
            "/api/v1/namespaces/default/configmaps/a%20b",
        ),
        (
            "/api/v1/namespaces/default/configmaps/%C3%A9",
            "/api/v1/namespaces/default/configmaps/%C3%A9",
        ),
        (
            "/api/v1/namespaces/default/configmaps/é",
            "/api/v1/namespaces/default/configmaps/%C3%A9",
        ),
        (
            "/api/v1/namespaces/default/configmaps/a%3Fb%23c",
            "/api/v1/namespaces/default/configmaps/a%3Fb%23c",
        ),
        (
            "/api/v1/namespaces/default/configmaps/100%25",
            "/api/v1/namespaces/default/configmaps/100%25",
        ),
        (
            "/api/v1/namespaces/default/configmaps/%7e",
            "/api/v1/namespaces/default/configmaps/~",
        ),
        (
            "/api/v1/namespaces/default/configmaps/a;b",
            "/api/v1/namespaces/default/configmaps/a%3Bb",
        ),
        (
            "/api/v1/namespaces/default/configmaps/{a}\"",
            "/api/v1/namespaces/default/configmaps/%7Ba%7D%22",
        ),
        (
            "/api/v1/namespaces/default/services/https:web:443/proxy/a@b!$&'()*+,=",
            "/api/v1/namespaces/default/services/https:web:443/proxy/a@b!$&'()*+,=",
        ),
        ("/healthz/.?verbose", "/healthz/?verbose"),
        ("/?", "/?"),
        (
            "/api/v1/pods?labelSelector=app%3Dweb&limit=500",
            "/api/v1/pods?labelSelector=app%3Dweb&limit=500",
        ),
    ];
    for (request, want) in rows {
        let (uri, got) = run("GET", request);
        let info = got.unwrap_or_else(|err| panic!("GET {request}: {err}"));
        let forwarded = info.forward_path_and_query(&uri);
        assert_eq!(forwarded, want, "GET {request}");
        // The upstream decodes the forwarded path back to exactly the authorised one.
        let (forwarded_uri, again) = run("GET", &forwarded);
        assert_eq!(
            again,
            Ok(info.clone()),
            "GET {request} forwarded as {forwarded}"
        );
        assert_eq!(
            normalize_path(forwarded_uri.path()),
            Ok(info.path),
            "GET {request}"
        );
    }
}

#[test]
fn adversarial_paths() {
    // verb, namespace, resource, name, forwarded path-and-query
    type Outcome = (
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
    );
    let rows: [(&str, Result<Outcome, Refusal>); 3] = [
        (
            "/api/v1/namespaces/default/pods/..%2F..%2Fsecrets",
            Err(Error::EncodedSlash),
        ),
        (
            "/api/v1/namespaces/default/pods/../secrets/x",
            Ok((
                "get",
                "default",
                "secrets",
                "x",
                "/api/v1/namespaces/default/secrets/x",
            )),
        ),
        (
            "//api//v1/namespaces/kube-system/secrets",
            Ok((
                "list",
                "kube-system",
                "secrets",
                "",
                "/api/v1/namespaces/kube-system/secrets",
            )),
        ),
    ];
    for (path, want) in rows {
        let (uri, got) = run("GET", path);
        let got = got.map(|info| {
            let forwarded = info.forward_path_and_query(&uri);
            (
                info.verb,
                info.namespace,
                info.resource,
                info.name,
                forwarded,
            )
        });
        let want = match want {
            Ok((verb, namespace, resource, name, forwarded)) => Ok((
                verb.to_owned(),
                namespace.to_owned(),
                resource.to_owned(),
                name.to_owned(),
                forwarded.to_owned(),
            )),
            Err(variant) => Err(variant(path.to_owned())),
        };
        assert_eq!(got, want, "GET {path}");
    }
}

#[test]
fn label_selector_grammar() {
    let valid = [
        "",
        "a",
        "!a",
        "a=b",
        "a==b",
        "a!=b",
        "a=",
        "a in (b)",
        "a in (b,c)",
        "a notin ()",
        "a in (,)",
        "a in (b,,c)",
        "a in (in)",
        "in",
        "a>1",
        "a<10",
        "x/a",
        "example.com/a=b",
        " a = b , c ",
        "a,b,!c",
        "a \0 ! ! !",
    ];
    let invalid = [
        "!",
        "a b",
        "a=b=c",
        "a in b",
        "a in (b",
        "a in (b c)",
        "a,",
        ",a",
        "a>b",
        "a>-1",
        "a=-b",
        "-a",
        "/a",
        "Example.com/a",
        "a/b/c",
        "!a=b",
        "a<",
        "=",
        "a=(b)",
        "a=b\0junk",
    ];
    for s in valid {
        assert!(label_selector_is_valid(s.as_bytes()), "should parse: {s:?}");
    }
    for s in invalid {
        assert!(
            !label_selector_is_valid(s.as_bytes()),
            "should not parse: {s:?}"
        );
    }
    let long_value = format!("a={}", "v".repeat(64));
    assert!(!label_selector_is_valid(long_value.as_bytes()));
    assert!(label_selector_is_valid(&long_value.as_bytes()[..65]));
}

/// A query shown to reviewers as the API server reads it: what reads as itself is
/// decoded, anything that could pass for a boundary or hide stays escaped.
#[test]
fn a_query_is_shown_as_read_without_new_boundaries() {
    let cases = [
        ("command=%72%6d&command=-rf", "command=rm&command=-rf"),
        // Go drops a pair holding `;`.
        ("command=ls&stdin=true;x", "command=ls"),
        // A decoded `&` or `=` would fake another parameter: kept escaped.
        (
            "command=ls%26container%3Dsidecar",
            "command=ls%26container%3Dsidecar",
        ),
        ("command=sh+-c", "command=sh%20-c"),
        ("command=a%0Ab", "command=a%0Ab"),
        ("x=%E2%80%AEtxt.exe", "x=%E2%80%AEtxt.exe"),
        ("x=%E2%80%8B", "x=%E2%80%8B"),
        ("x=caf%C3%A9", "x=café"),
        ("x=%FF", "x=%FF"),
        ("c%6Fmmand=ls", "command=ls"),
    ];
    for (query, shown) in cases {
        assert_eq!(query_as_read(query), shown, "{query}");
    }
}
