package gateway_test

import "chainmend/gateway"

// withServerOptions gives the stack's gateway more options: turn hooks, say.
func withServerOptions(opts ...gateway.Option) stackOpt {
	return func(o *stackOpts) { o.srvOpts = append(o.srvOpts, opts...) }
}
