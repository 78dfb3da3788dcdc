package events

type BuildRequestRecord struct {
	BuildId       string   `json:"build_id" binding:"required"`
	OrgId         string   `json:"org_id" binding:"required"`
	Architectures []string `json:"architectures" binding:"required"`
	RequestedAt   string   `json:"requested_at" binding:"required"`
}
