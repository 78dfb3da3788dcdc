// Package blob stores large objects (image deltas, build logs, artifacts) in
// an S3-compatible store through aws-sdk-go-v2. With no endpoint configured
// it runs gofakes3 in this process over a directory (one file per object),
// served on a loopback HTTP listener, and talks to it with the same client
// and the same protocol as to a production store.
//
// Objects stream both ways: Put sends a reader of known size as one
// streamed PUT (unsigned payload, nothing buffered), and a reader of unknown
// size as a multipart upload holding one part in memory at a time; Get
// returns the response body.
package blob

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3afero"
	"github.com/spf13/afero"
)

// ErrNotFound is returned (wrapped) by Get and Stat for a key the bucket
// does not hold.
var ErrNotFound = errors.New("blob: not found")

const (
	defaultBucket   = "flock"
	defaultRegion   = "us-east-1"
	defaultPartSize = 16 << 20
	// minPartSize is S3's smallest part but the last.
	minPartSize = 5 << 20
	// maxSinglePut is S3's largest object sent in one PUT.
	maxSinglePut = 5 << 30
	// maxParts is S3's most parts of one upload.
	maxParts = 10000
)

// Config configures Open.
type Config struct {
	// Endpoint is the S3-compatible store's URL (FLOCK_S3_ENDPOINT); empty
	// runs the embedded store under DataDir.
	Endpoint string
	// Bucket holds every object (FLOCK_S3_BUCKET); it is created when
	// missing. Default "flock".
	Bucket string
	// Region signs requests. Default us-east-1.
	Region string
	// AccessKey and SecretKey are static credentials; both empty uses the
	// SDK's default chain (environment, shared files, web identity, instance
	// role) for an external store, and fixed local ones for the embedded one.
	AccessKey, SecretKey string
	// DataDir holds the embedded store's objects; required when Endpoint is
	// empty.
	DataDir string
	// PartSize is the part size of multipart uploads, which Put uses for
	// readers of unknown size: the memory one upload holds. Default 16 MiB,
	// at least 5 MiB.
	PartSize int64
	// Log receives start-up and embedded-server lines. Default slog.Default().
	Log *slog.Logger
}

// Store reads and writes objects of one bucket.
type Store struct {
	client   *s3.Client
	bucket   string
	partSize int64
	log      *slog.Logger

	// embedded server, when Endpoint was empty
	srv      *http.Server
	srvDone  chan struct{}
	endpoint string
}

// Open connects to the store (or starts the embedded one), creates the
// bucket when it is missing and checks that it answers. Errors name the
// setting to fix.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	if cfg.Bucket == "" {
		cfg.Bucket = defaultBucket
	}
	if cfg.Region == "" {
		cfg.Region = defaultRegion
	}
	if cfg.PartSize == 0 {
		cfg.PartSize = defaultPartSize
	}
	if cfg.PartSize < minPartSize {
		return nil, fmt.Errorf("blob: part size %d is below S3's minimum of %d", cfg.PartSize, minPartSize)
	}
	s := &Store{bucket: cfg.Bucket, partSize: cfg.PartSize, log: log}

	endpoint := cfg.Endpoint
	if endpoint == "" {
		if cfg.DataDir == "" {
			return nil, errors.New("blob: the embedded store (FLOCK_S3_ENDPOINT unset) needs a data directory")
		}
		if err := s.startEmbedded(cfg.DataDir); err != nil {
			return nil, fmt.Errorf("start embedded S3 store (FLOCK_S3_ENDPOINT unset) in %s: %w", cfg.DataDir, err)
		}
		endpoint = s.endpoint
		if cfg.AccessKey == "" && cfg.SecretKey == "" {
			// gofakes3 accepts any signature; the SDK still wants some.
			cfg.AccessKey, cfg.SecretKey = "flock", "flock-embedded"
		}
	}

	var opts []func(*awsconfig.LoadOptions) error
	opts = append(opts, awsconfig.WithRegion(cfg.Region),
		// Plain checksums only when an operation needs them: gofakes3 and
		// several S3-compatible stores do not take the SDK's default
		// CRC32 trailers.
		awsconfig.WithRequestChecksumCalculation(aws.RequestChecksumCalculationWhenRequired),
		awsconfig.WithResponseChecksumValidation(aws.ResponseChecksumValidationWhenRequired))
	if cfg.AccessKey != "" || cfg.SecretKey != "" {
		opts = append(opts, awsconfig.WithCredentialsProvider(credentials.NewStaticCredentialsProvider(cfg.AccessKey, cfg.SecretKey, "")))
	}
	awsCfg, err := awsconfig.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("blob: S3 client configuration: %w", err)
	}
	s.client = s3.NewFromConfig(awsCfg, func(o *s3.Options) {
		o.BaseEndpoint = aws.String(endpoint)
		o.UsePathStyle = true
	})
	if err := s.ensureBucket(ctx); err != nil {
		s.Close()
		if s.srv == nil {
			return nil, fmt.Errorf("S3 store at %s (FLOCK_S3_ENDPOINT), bucket %s (FLOCK_S3_BUCKET): %w", endpoint, s.bucket, err)
		}
		return nil, fmt.Errorf("embedded S3 store, bucket %s: %w", s.bucket, err)
	}
	if s.srv != nil {
		log.Info("blob store: embedded gofakes3", "dir", cfg.DataDir, "endpoint", endpoint, "bucket", s.bucket)
	} else {
		log.Info("blob store: S3", "endpoint", endpoint, "bucket", s.bucket)
	}
	return s, nil
}

// startEmbedded serves gofakes3 with its objects as files under dir on a
// loopback port.
func (s *Store) startEmbedded(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	fs := afero.NewBasePathFs(afero.NewOsFs(), abs)
	objects, err := s3afero.MultiBucket(afero.NewBasePathFs(fs, "s3"))
	if err != nil {
		return err
	}
	spool := filepath.Join(abs, "incoming")
	if err := os.RemoveAll(spool); err != nil { // what a crash left
		return err
	}
	if err := os.MkdirAll(spool, 0o700); err != nil {
		return err
	}
	faker := gofakes3.New(&wholeObjects{MultiBucketBackend: objects, spool: spool},
		gofakes3.WithLogger(fakeLogger{s.log}),
	)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	s.endpoint = "http://" + ln.Addr().String()
	s.srv = &http.Server{Handler: faker.Server(), ReadHeaderTimeout: 10 * time.Second}
	s.srvDone = make(chan struct{})
	go func() {
		defer close(s.srvDone)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("embedded S3 store stopped", "err", err)
		}
	}()
	return nil
}

func (s *Store) ensureBucket(ctx context.Context) error {
	_, err := s.client.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: &s.bucket})
	if err == nil {
		return nil
	}
	if !isNotFound(err) {
		return fmt.Errorf("head bucket: %w", err)
	}
	_, err = s.client.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: &s.bucket})
	var owned *types.BucketAlreadyOwnedByYou
	var exists *types.BucketAlreadyExists
	if err != nil && !errors.As(err, &owned) && !errors.As(err, &exists) {
		return fmt.Errorf("create bucket: %w", err)
	}
	if err == nil {
		s.log.Info("created S3 bucket", "bucket", s.bucket)
	}
	return nil
}

// Embedded reports whether the store is the in-process gofakes3.
func (s *Store) Embedded() bool { return s.srv != nil }

// Bucket names the bucket the store uses.
func (s *Store) Bucket() string { return s.bucket }

// Endpoint is the URL the client talks to (the embedded server's loopback
// address when embedded).
func (s *Store) Endpoint() string { return aws.ToString(s.client.Options().BaseEndpoint) }

// Close stops the embedded server; an external store has nothing to close.
func (s *Store) Close() {
	if s.srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.srv.Shutdown(ctx); err != nil {
		s.srv.Close()
	}
	<-s.srvDone
}

// Put stores what r yields under key. size is r's length when known (-1
// when not): a known size up to 5 GiB goes as one streamed PUT, anything
// else as a multipart upload of PartSize parts. Either way the object
// appears whole or not at all. r is read once; an io.Seeker lets the SDK
// retry a single PUT.
func (s *Store) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	if key == "" {
		return errors.New("blob: put: empty key")
	}
	if size >= 0 && size <= maxSinglePut {
		return s.putSingle(ctx, key, r, size)
	}
	return s.putMultipart(ctx, key, r)
}

func (s *Store) putSingle(ctx context.Context, key string, r io.Reader, size int64) error {
	// A reader that ends early or runs long must fail the PUT, not store
	// a short or cut object.
	body := &exactReader{r: r, left: size}
	var in io.Reader = body
	if seeker, ok := r.(io.ReadSeeker); ok {
		if _, err := seeker.Seek(0, io.SeekCurrent); err == nil {
			in = &exactSeeker{exactReader: body, s: seeker, size: size}
		}
	}
	_, err := s.client.PutObject(ctx, &s3.PutObjectInput{
		Bucket: &s.bucket, Key: &key, Body: in, ContentLength: aws.Int64(size),
	}, unsignedPayload)
	if body.err != nil {
		// The server may have taken Content-Length bytes before the reader
		// turned out longer: that object is not what the caller meant.
		if derr := s.Delete(context.WithoutCancel(ctx), key); derr != nil {
			s.log.Warn("blob: delete a cut object", "key", key, "err", derr)
		}
		return fmt.Errorf("blob: put %s: %w", key, body.err)
	}
	if err != nil {
		return fmt.Errorf("blob: put %s (%d bytes): %w", key, size, err)
	}
	return nil
}

// unsignedPayload streams a body without hashing it first (the SDK would
// otherwise read it twice, and refuses unseekable bodies over plain HTTP).
func unsignedPayload(o *s3.Options) {
	o.APIOptions = append(o.APIOptions, v4.SwapComputePayloadSHA256ForUnsignedPayloadMiddleware)
}

// exactReader yields exactly left bytes of r, or an error: r ending early
// is io.ErrUnexpectedEOF; r holding more is err, returned instead of the
// last bytes, so the server never receives a whole body (which it would
// store, perhaps after the caller's clean-up) from a reader that is too long.
type exactReader struct {
	r    io.Reader
	left int64
	err  error
}

func (e *exactReader) Read(p []byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	if e.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > e.left {
		p = p[:e.left]
	}
	n, err := e.r.Read(p)
	e.left -= int64(n)
	if e.left > 0 {
		if err == io.EOF {
			return n, io.ErrUnexpectedEOF
		}
		return n, err
	}
	if err == nil {
		// Probe for a byte too many before the last bytes go out.
		var one [1]byte
		if m, _ := io.ReadFull(e.r, one[:]); m > 0 {
			e.err = errors.New("reader is longer than the size given")
			return 0, e.err
		}
	}
	return n, nil
}

// exactSeeker lets the SDK rewind a seekable body to retry.
type exactSeeker struct {
	*exactReader
	s     io.Seeker
	size  int64
	start int64
	init  bool
}

func (e *exactSeeker) Seek(off int64, whence int) (int64, error) {
	if !e.init {
		cur, err := e.s.Seek(0, io.SeekCurrent)
		if err != nil {
			return 0, err
		}
		e.start, e.init = cur, true
	}
	if whence == io.SeekStart && off == 0 {
		if _, err := e.s.Seek(e.start, io.SeekStart); err != nil {
			return 0, err
		}
		e.left, e.err = e.size, nil
		return 0, nil
	}
	if whence == io.SeekCurrent && off == 0 {
		return e.size - e.left, nil
	}
	if whence == io.SeekEnd && off == 0 {
		return e.size, nil
	}
	return 0, errors.New("blob: body seeks only to its start")
}

func (s *Store) putMultipart(ctx context.Context, key string, r io.Reader) error {
	up, err := s.client.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: &s.bucket, Key: &key})
	if err != nil {
		return fmt.Errorf("blob: put %s: start multipart upload: %w", key, err)
	}
	done := false
	defer func() {
		if done {
			return
		}
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if _, err := s.client.AbortMultipartUpload(actx, &s3.AbortMultipartUploadInput{Bucket: &s.bucket, Key: &key, UploadId: up.UploadId}); err != nil {
			s.log.Warn("blob: abort multipart upload", "key", key, "err", err)
		}
	}()
	buf := make([]byte, s.partSize)
	var parts []types.CompletedPart
	for n := int32(1); ; n++ {
		if n > maxParts {
			return fmt.Errorf("blob: put %s: more than %d parts of %d bytes", key, maxParts, s.partSize)
		}
		got, rerr := io.ReadFull(r, buf)
		if rerr != nil && rerr != io.EOF && rerr != io.ErrUnexpectedEOF {
			return fmt.Errorf("blob: put %s: read part %d: %w", key, n, rerr)
		}
		if got == 0 && n > 1 {
			break
		}
		out, err := s.client.UploadPart(ctx, &s3.UploadPartInput{
			Bucket: &s.bucket, Key: &key, UploadId: up.UploadId, PartNumber: aws.Int32(n),
			Body: bytes.NewReader(buf[:got]), ContentLength: aws.Int64(int64(got)),
		})
		if err != nil {
			return fmt.Errorf("blob: put %s: part %d: %w", key, n, err)
		}
		parts = append(parts, types.CompletedPart{ETag: out.ETag, PartNumber: aws.Int32(n)})
		if rerr != nil { // short read: that was the last part
			break
		}
	}
	_, err = s.client.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{
		Bucket: &s.bucket, Key: &key, UploadId: up.UploadId,
		MultipartUpload: &types.CompletedMultipartUpload{Parts: parts},
	})
	if err != nil {
		return fmt.Errorf("blob: put %s: complete multipart upload: %w", key, err)
	}
	done = true
	return nil
}

// Get opens the object under key and returns its body and size; the caller
// closes the body. A missing key is ErrNotFound.
func (s *Store) Get(ctx context.Context, key string) (io.ReadCloser, int64, error) {
	out, err := s.client.GetObject(ctx, &s3.GetObjectInput{Bucket: &s.bucket, Key: &key})
	if err != nil {
		if isNotFound(err) {
			return nil, 0, fmt.Errorf("blob: get %s: %w", key, ErrNotFound)
		}
		return nil, 0, fmt.Errorf("blob: get %s: %w", key, err)
	}
	return out.Body, aws.ToInt64(out.ContentLength), nil
}

// Info describes a stored object.
type Info struct {
	Key          string
	Size         int64
	LastModified time.Time
}

// Stat describes the object under key; a missing key is ErrNotFound.
func (s *Store) Stat(ctx context.Context, key string) (Info, error) {
	out, err := s.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &s.bucket, Key: &key})
	if err != nil {
		if isNotFound(err) {
			return Info{}, fmt.Errorf("blob: stat %s: %w", key, ErrNotFound)
		}
		return Info{}, fmt.Errorf("blob: stat %s: %w", key, err)
	}
	return Info{Key: key, Size: aws.ToInt64(out.ContentLength), LastModified: aws.ToTime(out.LastModified)}, nil
}

// Delete removes the object under key; a missing key is not an error.
func (s *Store) Delete(ctx context.Context, key string) error {
	_, err := s.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &s.bucket, Key: &key})
	if err != nil && !isNotFound(err) {
		return fmt.Errorf("blob: delete %s: %w", key, err)
	}
	return nil
}

// isNotFound recognises a missing key or bucket: typed for GET, a bare 404
// for HEAD (which has no body to name the error).
func isNotFound(err error) bool {
	var nsk *types.NoSuchKey
	var nsb *types.NoSuchBucket
	var nf *types.NotFound
	if errors.As(err, &nsk) || errors.As(err, &nsb) || errors.As(err, &nf) {
		return true
	}
	var api smithy.APIError
	if errors.As(err, &api) {
		switch api.ErrorCode() {
		case "NoSuchKey", "NoSuchBucket", "NotFound":
			return true
		}
	}
	var re interface{ HTTPStatusCode() int }
	return errors.As(err, &re) && re.HTTPStatusCode() == http.StatusNotFound
}

// wholeObjects makes the on-disk backend's puts all or nothing: s3afero
// writes an object's file as the request body arrives, so a client that
// stops halfway would leave a cut object behind (which HEAD then fails on).
// The body is spooled to a file of its own first and handed on only whole.
type wholeObjects struct {
	*s3afero.MultiBucketBackend
	spool string
}

func (b *wholeObjects) PutObject(bucket, key string, meta map[string]string, input io.Reader, size int64, cond *gofakes3.PutConditions) (gofakes3.PutObjectResult, error) {
	f, err := os.CreateTemp(b.spool, "put-*")
	if err != nil {
		return gofakes3.PutObjectResult{}, err
	}
	defer func() {
		f.Close()
		os.Remove(f.Name())
	}()
	n, err := io.Copy(f, input)
	if err != nil {
		return gofakes3.PutObjectResult{}, err
	}
	if n != size {
		return gofakes3.PutObjectResult{}, gofakes3.ErrIncompleteBody
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return gofakes3.PutObjectResult{}, err
	}
	return b.MultiBucketBackend.PutObject(bucket, key, meta, f, size, cond)
}

// fakeLogger sends gofakes3's lines to slog: warnings and errors only, since
// it logs every request at info.
type fakeLogger struct{ log *slog.Logger }

func (l fakeLogger) Print(level gofakes3.LogLevel, v ...any) {
	msg := strings.TrimSpace(fmt.Sprint(v...))
	switch level {
	case gofakes3.LogErr:
		l.log.Error("embedded S3 store: " + msg)
	case gofakes3.LogWarn:
		l.log.Warn("embedded S3 store: " + msg)
	}
}
