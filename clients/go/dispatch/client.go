// Package dispatch is a thin Go client for Dispatch, the gRPC-first job dispatcher: the
// everyday verbs (Create, Get, Wait, Watch, Cancel, Retry) over the generated stubs in
// package dispatchv1. Errors are gRPC status errors: use status.Code(err) and
// FieldViolations(err).
package dispatch

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	pb "dispatch/clients/go/dispatchv1"
)

// Client talks to dispatch's gRPC API. Jobs and Workers are the generated clients, for
// everything the wrapper does not cover.
type Client struct {
	conn    *grpc.ClientConn
	Jobs    pb.JobServiceClient
	Workers pb.WorkerServiceClient
}

// Connect dials target (host:port). Without options the connection is plaintext.
func Connect(target string, opts ...grpc.DialOption) (*Client, error) {
	if len(opts) == 0 {
		opts = []grpc.DialOption{grpc.WithInsecure()}
	}
	conn, err := grpc.Dial(target, opts...)
	if err != nil {
		return nil, err
	}
	return &Client{conn: conn, Jobs: pb.NewJobServiceClient(conn), Workers: pb.NewWorkerServiceClient(conn)}, nil
}

// Options say how to reach a dispatch with TLS and API keys on (docs/security.md).
type Options struct {
	// Token is an API key, sent as "authorization: Bearer <token>" with every call.
	Token string
	// CACertFile (PEM) turns TLS on, trusting that CA; TLS with the system's roots: set TLS.
	CACertFile string
	// ClientCertFile and ClientKeyFile (PEM) present a client certificate (mutual TLS).
	ClientCertFile, ClientKeyFile string
	// TLS turns TLS on even without CACertFile (the system's roots).
	TLS bool
}

// ConnectWith dials target (host:port) with opts' token and TLS settings.
func ConnectWith(target string, opts Options) (*Client, error) {
	var dial []grpc.DialOption
	if opts.TLS || opts.CACertFile != "" || opts.ClientCertFile != "" {
		cfg := &tls.Config{MinVersion: tls.VersionTLS12}
		if opts.CACertFile != "" {
			pem, err := os.ReadFile(opts.CACertFile)
			if err != nil {
				return nil, fmt.Errorf("reading the CA file: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("no certificate in %s", opts.CACertFile)
			}
			cfg.RootCAs = pool
		}
		if opts.ClientCertFile != "" {
			cert, err := tls.LoadX509KeyPair(opts.ClientCertFile, opts.ClientKeyFile)
			if err != nil {
				return nil, fmt.Errorf("reading the client certificate: %w", err)
			}
			cfg.Certificates = []tls.Certificate{cert}
		}
		dial = append(dial, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	} else {
		dial = append(dial, grpc.WithInsecure())
	}
	if opts.Token != "" {
		dial = append(dial, grpc.WithPerRPCCredentials(bearer{token: opts.Token, secure: opts.TLS || opts.CACertFile != ""}))
	}
	return Connect(target, dial...)
}

// bearer sends an API key with every call.
type bearer struct {
	token  string
	secure bool
}

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.token}, nil
}

// RequireTransportSecurity is false only for a plaintext connection the caller chose.
func (b bearer) RequireTransportSecurity() bool { return b.secure }

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Option sets a job option for Create.
type Option func(*pb.JobOptions)

// MaxAttempts bounds the attempts of the job.
func MaxAttempts(n uint32) Option { return func(o *pb.JobOptions) { o.MaxAttempts = n } }

// Timeout bounds each attempt.
func Timeout(d time.Duration) Option { return func(o *pb.JobOptions) { o.Timeout = durationpb.New(d) } }

// Delay runs the job no earlier than d from now.
func Delay(d time.Duration) Option { return func(o *pb.JobOptions) { o.Delay = durationpb.New(d) } }

// IdempotencyKey makes a second Create with the same key return the first job.
func IdempotencyKey(k string) Option { return func(o *pb.JobOptions) { o.IdempotencyKey = k } }

// Labels attaches free-form labels.
func Labels(l map[string]string) Option { return func(o *pb.JobOptions) { o.Labels = l } }

// Create creates a job; payload is any value structpb can hold (maps, slices, strings,
// numbers, bools, nil).
func (c *Client) Create(ctx context.Context, queue, jobType string, payload interface{}, opts ...Option) (*pb.Job, error) {
	resp, err := c.CreateJob(ctx, queue, jobType, payload, opts...)
	if err != nil {
		return nil, err
	}
	return resp.GetJob(), nil
}

// CreateJob is Create with the whole response (Created is false when an idempotency key matched).
func (c *Client) CreateJob(ctx context.Context, queue, jobType string, payload interface{}, opts ...Option) (*pb.CreateJobResponse, error) {
	value, err := structpb.NewValue(payload)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "payload: %v", err)
	}
	options := &pb.JobOptions{}
	for _, o := range opts {
		o(options)
	}
	return c.Jobs.CreateJob(ctx, &pb.CreateJobRequest{Queue: queue, Type: jobType, Payload: value, Options: options})
}

// Get reads a job; codes.NotFound when there is none.
func (c *Client) Get(ctx context.Context, id string) (*pb.Job, error) {
	resp, err := c.Jobs.GetJob(ctx, &pb.GetJobRequest{Id: id})
	if err != nil {
		return nil, err
	}
	return resp.GetJob(), nil
}

// Watch calls fn for each event of the job from its creation on, one per transition, until
// the stream ends after the terminal one (or ctx ends).
func (c *Client) Watch(ctx context.Context, id string, fn func(*pb.JobEvent)) error {
	stream, err := c.Jobs.WatchJob(ctx, &pb.WatchJobRequest{Id: id})
	if err != nil {
		return err
	}
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		fn(resp.GetEvent())
	}
}

// Wait returns the job once it is SUCCEEDED, FAILED or CANCELLED; codes.DeadlineExceeded
// after timeout.
func (c *Client) Wait(ctx context.Context, id string, timeout time.Duration) (*pb.Job, error) {
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// The stream replays history (a retried job has older terminal events) and ends once the
	// latest event is terminal: follow it to its end.
	if err := c.Watch(wctx, id, func(*pb.JobEvent) {}); err != nil {
		return nil, err
	}
	return c.Get(ctx, id)
}

// Cancel cancels a waiting job at once, a running one through its next heartbeat;
// codes.FailedPrecondition when the job has already ended.
func (c *Client) Cancel(ctx context.Context, id, reason string) (*pb.Job, error) {
	resp, err := c.Jobs.CancelJob(ctx, &pb.CancelJobRequest{Id: id, Reason: reason})
	if err != nil {
		return nil, err
	}
	return resp.GetJob(), nil
}

// Retry runs a FAILED or CANCELLED job again with a fresh budget of attempts.
func (c *Client) Retry(ctx context.Context, id string) (*pb.Job, error) {
	resp, err := c.Jobs.RetryJob(ctx, &pb.RetryJobRequest{Id: id})
	if err != nil {
		return nil, err
	}
	return resp.GetJob(), nil
}

// FieldViolation is one problem with one field of a refused request.
type FieldViolation struct{ Field, Description string }

// FieldViolations lists the fields an INVALID_ARGUMENT error named (nil for other errors).
func FieldViolations(err error) []FieldViolation {
	s, ok := status.FromError(err)
	if !ok || s.Code() != codes.InvalidArgument {
		return nil
	}
	var out []FieldViolation
	for _, d := range s.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				out = append(out, FieldViolation{v.GetField(), v.GetDescription()})
			}
		}
	}
	return out
}
